// One streamed chat completion with a forced function call, made by the official OpenAI Node SDK
// and reassembled by its own streaming helper (chat.completions.stream, then finalChatCompletion).
// Env: BASE_URL (e.g. http://127.0.0.1:8000/v1) and MODEL. Prints one JSON line to stdout:
// {"finish_reason": ..., "tool_calls": [...], "chunks": N}; on any failure, the error on stderr and exit 1.
import OpenAI from 'openai';

async function main() {
  const baseURL = process.env.BASE_URL;
  const model = process.env.MODEL;
  if (!baseURL || !model) throw new Error('BASE_URL and MODEL must be set');

  const client = new OpenAI({ baseURL, apiKey: 'none', maxRetries: 0 });
  const stream = client.chat.completions.stream({
    model,
    messages: [{ role: 'user', content: 'What is the weather in Paris?' }],
    tools: [
      {
        type: 'function',
        function: {
          name: 'get_weather',
          description: 'Weather of a city',
          parameters: {
            type: 'object',
            properties: {
              city: { type: 'string' },
              unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
            },
            required: ['city', 'unit'],
            additionalProperties: false,
          },
        },
      },
    ],
    tool_choice: { type: 'function', function: { name: 'get_weather' } },
    max_tokens: 60,
    temperature: 0,
  });

  let chunks = 0;
  stream.on('chunk', () => {
    chunks += 1;
  });

  const completion = await stream.finalChatCompletion();
  const choice = completion.choices[0];
  if (!choice) throw new Error(`no choices in the final completion: ${JSON.stringify(completion)}`);
  process.stdout.write(
    JSON.stringify({
      finish_reason: choice.finish_reason,
      tool_calls: choice.message.tool_calls ?? [],
      chunks,
    }) + '\n',
  );
}

main().catch((err) => {
  const cause = err?.cause ? `\ncaused by: ${err.cause?.stack ?? err.cause}` : '';
  process.stderr.write(`${err?.stack ?? err}${cause}\n`);
  process.exit(1);
});
