"""Model onboarding: whatever MODEL a user names (OpenVINO IR directory, Hugging Face directory or
hub id) becomes a served OpenVINO IR directory, converted at most once per cache volume.

    source.py    what MODEL names, and the hub download (huggingface_hub)
    options.py   the conversion flags shared by `ovllm serve` and `ovllm convert`
    store.py     the conversion cache: keys, a file lock, atomic publication
    progress.py  bars on a terminal, periodic log lines elsewhere
    prepare.py   the orchestration: source -> (download) -> (convert once) -> IR directory
    export.py    the conversion itself (optimum-intel, NNCF): imported only with the convert extra
    cli.py       `ovllm convert`
"""
