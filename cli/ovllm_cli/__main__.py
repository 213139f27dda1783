import sys

from ovllm_cli.main import main

sys.exit(main())
