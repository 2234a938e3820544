import json
import re

from libs.api.models import CONDITION_REASON_PATTERN
from libs.events import Envelope, PermanentError, Reason, TransientError
from libs.events.catalog import ClusterFailed
from tests.support.events import NOW


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
