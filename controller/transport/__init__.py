"""How the controller's parts reach each other: the API's framing and TLS certificates (pki).
Used by server, clients and runtimes alike; imports only the standard library and tep/.
"""
