import ast
import json
import re
from pathlib import Path

from libs.api.models import CONDITION_REASON_PATTERN
from libs.events import Envelope, PermanentError, Reason, TransientError
from libs.events.catalog import ClusterFailed
from libs.events.reasons import ANY_STAGE_FAILURES, STAGE_FAILURES
from services.topology import NAMES
from tests.support.events import NOW

REPO = Path(__file__).resolve().parents[3]


def test_every_reason_is_a_condition_reason_of_its_own() -> None:
    assert all(re.fullmatch(CONDITION_REASON_PATTERN, reason) for reason in Reason)
    assert len({reason.value for reason in Reason}) == len(Reason)


def test_a_failure_event_carries_the_plain_string_on_the_wire() -> None:
    failed = Envelope.new(
        ClusterFailed(stage="vnode", reason=Reason.SPEC_NOT_RECORDED, message="m", failed_event="cluster.accepted"),
        cluster_id="team/a",
        now=NOW,
    )
    assert json.loads(failed.to_json())["data"]["reason"] == "SpecNotRecorded"
    assert ClusterFailed.model_validate_json(failed.data.model_dump_json()).reason == "SpecNotRecorded"


def test_errors_without_a_reason_say_whether_they_are_worth_retrying() -> None:
    assert TransientError("later").reason == "Transient"
    assert PermanentError("never").reason == "Permanent"


def _failure_reasons_in(service_dir: Path) -> set[str]:
    """Every Reason member a service's code passes as `reason=` to PermanentError or ClusterFailed."""
    found: set[str] = set()
    for path in service_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called not in ("PermanentError", "ClusterFailed"):
                continue
            for keyword in node.keywords:
                if keyword.arg == "reason":
                    found |= {
                        Reason[n.attr].value
                        for n in ast.walk(keyword.value)
                        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "Reason"
                    }
    return found


def test_each_stage_declares_the_reasons_its_code_fails_with() -> None:
    assert list(STAGE_FAILURES) == list(NAMES)
    for stage in NAMES:
        used = _failure_reasons_in(REPO / "services" / stage)
        assert used <= {*STAGE_FAILURES[stage], *ANY_STAGE_FAILURES}, (stage, used - set(STAGE_FAILURES[stage]))
        assert set(STAGE_FAILURES[stage]) <= used, (stage, "declared but never used", set(STAGE_FAILURES[stage]) - used)
