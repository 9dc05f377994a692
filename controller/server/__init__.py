"""The controller process: entry point (main), the API with its declared operations (api, ops), the
one change path (change), and Core's pieces: intent, ports, hosts, switches, workloads, views, counters.
May import every room but client/ and runtimes/.
"""
