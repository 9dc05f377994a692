"""The labels nvctl-cni asks for a container's port: the CNI convention's args.cni.labels
from the network configuration, then CNI_ARGS's NVCTL_LABELS, which wins on a key."""
import pytest

from controller.runtimes.cni import CniError, E_CONFIG, E_ENV, parse_args, request_labels


def test_config_labels_and_cni_args_labels_merge_and_cni_args_wins():
    cfg = {"args": {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": "back"}]}}}
    args = parse_args("IgnoreUnknown=1;K8S_POD_NAME=x;NVCTL_LABELS=tier=front,example.com/canary=")
    assert request_labels(cfg, args) == {"app": "web", "tier": "front", "example.com/canary": ""}
    assert request_labels({}, {}) == {}
    assert request_labels({"args": {"other": 1}}, parse_args("NVCTL_LABELS=a=b")) == {"a": "b"}


@pytest.mark.parametrize("cfg, cni_args, code, says", [
    ({"args": {"cni": {"labels": ["app=web"]}}}, "", E_CONFIG, "args.cni.labels[0]"),
    ({"args": {"cni": {"labels": [{"key": "app"}]}}}, "", E_CONFIG, "args.cni.labels[0]"),
    ({}, "NVCTL_LABELS=app", E_ENV, "'app' is not KEY=VALUE"),
    ({}, "NVCTL_LABELS==web", E_ENV, "'=web' is not KEY=VALUE"),
])
def test_a_malformed_label_request_is_a_cni_error_naming_it(cfg, cni_args, code, says):
    with pytest.raises(CniError) as e:
        request_labels(cfg, parse_args(cni_args))
    assert e.value.code == code and says in str(e.value)
