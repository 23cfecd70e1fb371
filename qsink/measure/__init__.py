"""The spike half of qsink: massive activations, attention sinks and outlier statistics."""

from qsink.measure.profile import PROFILE_SCHEMA, Profile
from qsink.measure.profiler import ProfileSettings, profile

__all__ = ["PROFILE_SCHEMA", "Profile", "ProfileSettings", "profile"]
