"""Conversions between meshbreaker.v1 protos and the engine's types, with validation.

Every validation error is a ConfigError whose `field` is the proto field path, e.g.
"policy.config.failure_rate_threshold", so the server can answer INVALID_ARGUMENT naming it and the
agent can NACK with it. One module per job, all re-exported here (`convert.policy_from_proto`):

    names.py     policy ids, caller services, override reasons (and the method/service grammar)
    times.py     Durations and Timestamps as seconds
    config.py    BreakerConfig messages <-> config layers and BreakerConfig, a codec per field kind
    policy.py    Policy messages <-> PolicySpec: selectors, overrides, fleet decisions, canaries
    snapshot.py  breaker states, snapshots, transition counts and histograms in reports
"""

from meshbreaker.control.convert.config import MAX_CODES as MAX_CODES
from meshbreaker.control.convert.config import config_from_proto as config_from_proto
from meshbreaker.control.convert.config import config_to_proto as config_to_proto
from meshbreaker.control.convert.config import layer_from_proto as layer_from_proto
from meshbreaker.control.convert.config import layer_to_proto as layer_to_proto
from meshbreaker.control.convert.names import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from meshbreaker.control.convert.names import MAX_REASON_LENGTH as MAX_REASON_LENGTH
from meshbreaker.control.convert.names import check_caller as check_caller
from meshbreaker.control.convert.names import check_method as check_method
from meshbreaker.control.convert.names import check_policy_id as check_policy_id
from meshbreaker.control.convert.names import check_reason as check_reason
from meshbreaker.control.convert.names import check_service as check_service
from meshbreaker.control.convert.policy import MAX_DESCRIPTION_LENGTH as MAX_DESCRIPTION_LENGTH
from meshbreaker.control.convert.policy import MAX_PROBERS as MAX_PROBERS
from meshbreaker.control.convert.policy import CanarySpec as CanarySpec
from meshbreaker.control.convert.policy import FleetSpec as FleetSpec
from meshbreaker.control.convert.policy import PolicySpec as PolicySpec
from meshbreaker.control.convert.policy import Selector as Selector
from meshbreaker.control.convert.policy import applicable as applicable
from meshbreaker.control.convert.policy import override_from_proto as override_from_proto
from meshbreaker.control.convert.policy import override_to_proto as override_to_proto
from meshbreaker.control.convert.policy import policy_from_proto as policy_from_proto
from meshbreaker.control.convert.policy import policy_to_proto as policy_to_proto
from meshbreaker.control.convert.policy import selector_from_proto as selector_from_proto
from meshbreaker.control.convert.policy import selector_to_proto as selector_to_proto
from meshbreaker.control.convert.snapshot import breaker_to_proto as breaker_to_proto
from meshbreaker.control.convert.snapshot import check_histogram as check_histogram
from meshbreaker.control.convert.snapshot import check_transitions as check_transitions
from meshbreaker.control.convert.snapshot import histogram_from_proto as histogram_from_proto
from meshbreaker.control.convert.snapshot import snapshot_to_proto as snapshot_to_proto
from meshbreaker.control.convert.snapshot import state_from_proto as state_from_proto
from meshbreaker.control.convert.snapshot import state_to_proto as state_to_proto
from meshbreaker.control.convert.snapshot import transitions_from_proto as transitions_from_proto
from meshbreaker.control.convert.times import duration_seconds as duration_seconds
from meshbreaker.control.convert.times import seconds_to_duration as seconds_to_duration
from meshbreaker.control.convert.times import seconds_to_timestamp as seconds_to_timestamp
from meshbreaker.control.convert.times import timestamp_seconds as timestamp_seconds
