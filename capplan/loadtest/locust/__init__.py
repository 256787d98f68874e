"""The Locust engine: jobs and launch in the capplan process; gevent only in its child processes.

Imports nothing: the child process must be patched by gevent before anything heavy loads.
"""
