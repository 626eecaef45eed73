"""The setup cell that opens every chapter (chapter 7 explains it).

On Google Colab it clones this repository, installs the helper package (leaving Colab's own
torch and numpy alone: nothing is pinned, and the package asks only for lower bounds), fetches
the data and reports the GPU, which the training engine then uses (``device="auto"``); anywhere
else it does nothing. The text lives here so that tests can check every chapter carries the same
cell (tests/test_book.py) and run its Colab branch with a fake Colab module (tests/test_colab.py).
The repository and branch must match ``repository`` in ``_config.yml``, which the Colab launch
buttons use (tests/test_colab.py checks both).
"""

REPOSITORY_URL = "https://github.com/anibook/anibook"
REPOSITORY_BRANCH = "main"

SETUP_CELL = f'''# Setup: on Google Colab, install the helpers, fetch the data and look for a GPU; elsewhere, nothing.
import subprocess, sys
from pathlib import Path

if "google.colab" in sys.modules:
    repo = Path("anibook").resolve()
    if not repo.exists():
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{REPOSITORY_BRANCH}",
                        "{REPOSITORY_URL}", str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(repo)], check=True)
    sys.path.insert(0, str(repo))
    subprocess.run([sys.executable, "-m", "anibook_utils", "fetch-data"], check=True)
    import torch
    if torch.cuda.is_available():
        print(f"Training runs on the GPU: {{torch.cuda.get_device_name(0)}}")
    else:
        print("No GPU: training runs on the CPU (Runtime > Change runtime type > GPU is faster).")'''
