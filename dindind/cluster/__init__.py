"""Cluster bring-up: an ordered list of small actions, modelled on kind's.

plan.py derives every name, address and subnet from the settings (pure);
create.py runs the actions in order, each behind one status line, and on
failure removes what it created unless asked to retain it. The same code
runs inside the top-level container (nested mode) and directly against the
host's engine (non-nested mode); host.py is the host side of both, with
access.py (kubeconfigs and nodes read from the engine) and kubeconfig.py
(a user's kubeconfig: merging a cluster in, removing it again) beside it.
"""
