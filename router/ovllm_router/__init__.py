"""ovllm's request router: spreads OpenAI API requests over engine replicas, sending requests that
share a prompt prefix to the same replica so that its prefix cache serves them.

It imports neither ovllm_engine nor OpenVINO: its image holds aiohttp, prometheus-client and the
kubernetes client only.
"""
