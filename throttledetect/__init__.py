"""throttledetect: tell from a packet capture whether calls are being throttled, and how.

Pipeline (data flows one way): read -> flows -> classify -> metrics -> detect -> report.
"""
__version__ = "0.1.0"
