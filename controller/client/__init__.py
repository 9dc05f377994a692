"""The `nvctl` command line, the web view and the progress display. Reaches the server only through
the API (api.py); never imports server/, state/, switch/, packetin/ or compile/; scenarios/ only
inside the lab commands (labcmd.py), where they run.
"""
