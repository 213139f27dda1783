"""ovllm's Kubernetes operator. It never imports ovllm_engine, OpenVINO or torch: its image stays small."""
