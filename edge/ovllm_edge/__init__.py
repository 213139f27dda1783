"""The HTTP edge that `ovllm serve` and `ovllm router` share (both on aiohttp): OpenAI-style error
bodies, a connection handler that answers malformed HTTP with them instead of echoing the request,
header timeouts, and client-error logs that cannot flood."""
