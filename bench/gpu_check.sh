#!/usr/bin/env bash
# The GPU check of issue 18: at most 4 minutes on one GPU, with the packages that machine's image has (torch,
# and transformers if present; no gradio). Prints a table to paste into bench/README.md, GPU section.
#   bash bench/gpu_check.sh            # on a machine with CUDA
#   bash bench/gpu_check.sh --smoke    # anywhere: a tiny model, to check the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
python -c "import transformers; print('transformers', transformers.__version__)" 2>/dev/null || echo "transformers: not installed (our figures only)"
exec timeout 230 python bench/gpu_check.py "$@"
