"""Container runtimes' plugins: the CNI plugin (nvctl-cni) and the Docker network driver. They are
clients: they import the API's client (controller/client/api.py), never the server, and plug on their host with tep/.
"""
