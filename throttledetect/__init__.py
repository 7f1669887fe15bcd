"""throttledetect: tell from a packet capture whether calls are being throttled, and how.

Pipeline (data flows one way): read -> flows -> classify -> metrics -> detect -> report.

    import throttledetect
    report = throttledetect.analyze("call.pcap")
    report.verdicts()            # {"whatsapp_call": "policing", ...}

The API (throttledetect/api.py) is loaded on first use, so `import throttledetect` stays fast and
commands that do not need the analysis (flows, --help) do not pay for numba, scipy or matplotlib.
"""
__version__ = "0.1.0"
__all__ = ["analyze", "compare", "Report", "CaptureError", "__version__"]

_API = {"analyze", "compare", "Report"}


def __getattr__(name):
    if name in _API:
        from throttledetect import api
        return getattr(api, name)
    if name == "CaptureError":
        from throttledetect.read import CaptureError
        return CaptureError
    raise AttributeError(f"module 'throttledetect' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
