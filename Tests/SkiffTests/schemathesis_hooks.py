# Hooks for ManagerAPIConformanceTests' schemathesis run (SCHEMATHESIS_HOOKS).
# `GET /vms/{name}/logs?follow=true` streams the console until the VM
# stops, as `docker logs -f` does: a VM that prints now and then keeps every
# read inside schemathesis's timeout, so the fuzzer would wait forever.
# Generated requests follow no log; the follow path is ManagerTests'.
import schemathesis


def _no_follow(query):
    if query and "follow" in query:
        query = dict(query)
        query["follow"] = False
    return query


@schemathesis.hook
def map_query(context, query):
    return _no_follow(query)


@schemathesis.hook
def map_case(context, case):
    case.query = _no_follow(case.query)
    return case
