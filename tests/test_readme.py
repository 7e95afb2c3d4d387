"""The README's example runs as written (with the checkpoint path resolved) and says true things."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(shared_checkpoint, capsys):
    text = README.read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    path = shared_checkpoint("mess3_paper")
    code = code.replace('"../shared/checkpoints/mess3_paper.safetensors"', repr(str(path)))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert abs(namespace["table"]["blocks.3.hook_resid_post"]["mse_all"] - 0.00039) < 0.00002
    assert namespace["report"].fold_reduction("encoding") > 30
    assert "0.8025" in capsys.readouterr().out


def test_readme_patching_example_runs(shared_checkpoint):
    """The six-line patching example, after the main example, with one probe for every layer."""
    text = README.read_text()
    main = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S).group(1)
    patching = re.search(
        r"## Activation patching against theory\n.*?```python\n(.*?)```", text, re.S
    )
    code = patching.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) == 6
    path = shared_checkpoint("mess3_paper")
    main = main.replace('"../shared/checkpoints/mess3_paper.safetensors"', repr(str(path)))
    main = "\n".join(line for line in main.splitlines() if "intervention_report" not in line)
    namespace: dict = {}
    exec(compile(main, str(README), "exec"), namespace)
    namespace["probe"] = namespace["table"].probes[namespace["hook"]]
    exec(compile(code, str(README), "exec"), namespace)
    grid = namespace["grid"]
    assert grid.shape == (4, 10)
    assert grid[3, -1] > 0.95 and grid[:, :-1].abs().max() < 0.1


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
