"""The setup cell that opens every chapter (chapter 7 explains it).

On Google Colab it clones this repository, installs the helper package (leaving
Colab's own torch and numpy alone) and fetches the data; anywhere else it does nothing.
The text lives here so that a test can check every chapter carries the same cell.
"""

REPOSITORY_URL = "https://github.com/anibook/anibook"

SETUP_CELL = f'''# Setup: on Google Colab, install the book's helpers and fetch the data; elsewhere, nothing.
import subprocess, sys
from pathlib import Path

if "google.colab" in sys.modules:
    repo = Path("anibook")
    if not repo.exists():
        subprocess.run(["git", "clone", "--depth", "1", "{REPOSITORY_URL}", str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(repo)], check=True)
    sys.path.insert(0, str(repo))
    subprocess.run([sys.executable, "-m", "anibook_utils", "fetch-data"], check=True)'''
