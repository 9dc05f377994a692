"""Talking to switches: the os-ken session adapter, the OpenFlow wire codec, the reconciler (desired
against installed, one bundle) and a fake switch with OpenFlow's semantics for tests and benches.
May import dataplane/, controller/spaces/, controller/compile/ and controller/transport/; never the server or clients.
"""
