"""LeNet-5 trained on Fashion-MNIST with its file's own defaults, from the command line
(the Debian package's data; about two minutes on two cores)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DATA.exists(), reason="needs the dataset-fashion-mnist package")
def test_lenet5_reaches_89_percent_within_its_5_epochs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "symnet", "train", "examples/lenet5.nn",
                             "-q", "-o", str(tmp_path / "lenet5.ckpt")],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    accuracies = [float(a) for a in re.findall(r"test acc ([0-9.]+)%", result.stdout)]
    assert len(accuracies) == 5, result.stdout
    assert accuracies[-1] >= 89.0, result.stdout
