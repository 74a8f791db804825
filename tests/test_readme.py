"""The README's first two commands are what CI and a newcomer run: keep them in sync with .ci/run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The lines of the README's first two ```bash blocks that are commands (not comments)."""
    blocks, inside, current = [], False, []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.strip() == "```bash" and not inside:
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append([l for l in current if l.strip() and not l.lstrip().startswith("#")])
        elif inside:
            current.append(line)
    return [cmd for block in blocks[:2] for cmd in block]


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    commands = readme_commands()
    assert len(commands) == 2, "the README must open with two bash blocks: the main job, then the tests"
    assert commands[1].replace("pip install ", "pip install -q ", 2) == ci_command


def test_readme_main_command_installs_with_the_cpu_constraint():
    assert "-c constraints/cpu.txt" in readme_commands()[0]
