"""`ovllm bench`: throughput offline (the pipeline in this process) and serving online (any
OpenAI-compatible server), with the flags and the metric definitions of vLLM's benchmarks.

    datasets.py      random, ShareGPT-format and shared-prefix prompts of known token lengths
    throughput.py    `ovllm bench throughput`
    serve.py         `ovllm bench serve`: the streaming client and the load (rate or concurrency)
    serve_metrics.py TTFT, TPOT, ITL, E2EL, throughputs and goodput from per-request timings
    cli.py           the `ovllm bench` command line
"""
