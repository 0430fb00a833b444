"""``/speak`` in `parley chat`: a real process on the offline stand-in, whose speech endpoint
answers with a short silent MP3; the file lands in the working directory."""

from __future__ import annotations

import subprocess

from adapters.standin.speech import MP3_FRAME_HEADER, silent_mp3
from core import sentences
from tests.e2e.test_chat_cli import PARLEY, chat_env


def run_chat(tmp_path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        f"{PARLEY} chat",
        shell=True,
        input=script,
        cwd=tmp_path,
        env=chat_env(tmp_path, NO_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_speak_saves_the_last_answer_read_aloud_and_says_where(tmp_path):
    done = run_chat(tmp_path, "/speak\ntell me about owls\n/speak\n/speak\n/usage\n")
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert sentences.NOTHING_TO_SPEAK in out  # asked before any answer
    first, second = tmp_path / "parley-answer.mp3", tmp_path / "parley-answer-2.mp3"
    assert f"Audio saved to {first}" in out and f"Audio saved to {second}" in out
    assert first.read_bytes() == silent_mp3()
    assert first.read_bytes().startswith(MP3_FRAME_HEADER)
    # the answer and two readings, all by the stand-in, which costs nothing
    assert "This channel: 3 model calls" in out and "$0.0000" in out
