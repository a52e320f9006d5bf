import pytest
from adamw_trainer.exit_codes import (
    ExitReason,
    TerminationMessage,
    reason_for_exit_code,
    success_reason,
)


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


@pytest.mark.parametrize(
    "code, told, reason",
    [(0, "TargetReached", ExitReason.TARGET_REACHED), (0, "EarlyStopped", ExitReason.EARLY_STOPPED),
     (0, "Succeeded", ExitReason.SUCCEEDED), (0, None, ExitReason.SUCCEEDED),
     (0, "Diverged", ExitReason.SUCCEEDED),  # exit 0 is success; a failure reason cannot undo it
     (1, "TargetReached", None), (143, "EarlyStopped", None)],  # nor can a message make success
)
def test_success_reasons_come_from_exit_0_plus_the_message(code, told, reason):
    message = TerminationMessage(told, code, step=60) if told else None
    assert success_reason(code, message) is reason


def test_termination_message_carries_the_convergence_facts():
    msg = TerminationMessage("TargetReached", 0, step=60, validation_loss=1.74, best_validation_loss=1.7,
                             best_checkpoint_step=50)
    back = TerminationMessage.from_json(msg.to_json())
    assert (back.validation_loss, back.best_validation_loss, back.best_checkpoint_step) == (1.74, 1.7, 50)
    old = TerminationMessage.from_json('{"reason":"Succeeded","exitCode":0,"step":3}')  # an older trainer
    assert old.validation_loss is None and old.best_checkpoint_step is None
