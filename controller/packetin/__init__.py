"""Answers to packets the pipeline sends the controller: DHCP, DNS, path MTU (punt, responder) and
logged ACL rules' lines (acl_log). May import dataplane/, topology/, controller/spaces/, layers/ and compile/.
"""
