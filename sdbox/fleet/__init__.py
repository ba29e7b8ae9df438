"""The centre's fleet service: boxes check in, ship their audit trail, and operators see them.

:mod:`sdbox.fleet.service` (HTTP and the request logic), :mod:`sdbox.fleet.store`
(the database), :mod:`sdbox.fleet.dashboard` (the operators' pages). The protocol
is :mod:`sdbox.centre.fleet`, shared with the box's reporter. docs/fleet.md.
"""
