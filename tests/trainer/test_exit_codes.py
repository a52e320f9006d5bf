import pytest
from adamw_trainer.exit_codes import ExitReason, TerminationMessage, reason_for_exit_code


@pytest.mark.parametrize(
    "code, reason",
    [(0, ExitReason.SUCCEEDED), (2, ExitReason.INVALID_CONFIG), (3, ExitReason.DIVERGED),
     (143, ExitReason.PREEMPTED), (1, ExitReason.CRASHED), (137, ExitReason.CRASHED),
     (-9, ExitReason.CRASHED)],
)
def test_exit_code_contract(code, reason):
    assert reason_for_exit_code(code) is reason


def test_termination_message_round_trip_and_size_cap(tmp_path):
    msg = TerminationMessage("Diverged", 3, step=40, last_good_checkpoint_step=30, message="x" * 9000)
    text = msg.to_json()
    assert len(text) <= 4096
    back = TerminationMessage.from_json(text)
    assert (back.reason, back.exit_code, back.step, back.last_good_checkpoint_step) == ("Diverged", 3, 40, 30)
    assert msg.write(tmp_path / "term") and (tmp_path / "term").read_text() == text
    assert not msg.write(tmp_path / "no" / "such" / "dir")
