"""Drives sfsync's OData 4.0 endpoint with python-odata (an OData v4 client that is not ours):
reads $metadata and builds entity classes from it, pages through an entity set by
@odata.nextLink, runs every filter operator, $orderby, $select, $count, reads PII as two
principals, and sends a malformed $filter. Prints one JSON object of results; the Rust test
(crates/sfsync/tests/odata_e2e.rs) checks them against the rows it created.

Usage: odata_client.py SERVICE_URL USER PASSWORD PII_USER PII_PASSWORD PREFIX
"""

import inspect
import json
import sys

import requests
from requests.auth import HTTPBasicAuth
from odata import ODataService
from odata.property import PropertyBase
from odata.query import Query


def names(rows):
    return [r.Name for r in rows]


def main():
    url, user, password, pii_user, pii_password, prefix = sys.argv[1:7]
    out = {}
    svc = ODataService(url, auth=HTTPBasicAuth(user, password), reflect_entities=True)
    Account = svc.entities["Account"]
    out["entity_sets"] = sorted(svc.entities.keys())
    out["account_properties"] = sorted(
        p.name for _, p in inspect.getmembers(Account) if isinstance(p, PropertyBase)
    )
    mine = Account.Name.startswith(prefix)

    def q():
        return svc.query(Account).filter(mine)

    # Paging: everything of ours by Name, following @odata.nextLink.
    out["paged_names"] = names(q().order_by(Account.Name.asc()))
    conn = svc.default_context.connection
    first = conn.execute_get(
        url + "Account",
        {"$filter": f"startswith(Name,'{prefix}')", "$orderby": "Name"},
    )
    out["first_page_len"] = len(first["value"])
    out["first_page_next_link"] = first.get("@odata.nextLink")

    # Every operator.
    E = Account.NumberOfEmployees
    filters = {
        "eq": Account.Name == prefix + "03",
        "ne": Account.Industry != "Banking",
        "gt": E > 100,
        "ge": E >= 100,
        "lt": E < 40,
        "le": E <= 40,
        "null": E.is_null(),
        "contains": Account.Description.contains("needle"),
        "not_contains": Account.Description.lacks("needle"),
        "and": Query.and_(E > 20, Account.Industry == "Energy"),
        "or": Query.grouped(Query.or_(Account.Name == prefix + "01", Account.Name == prefix + "02")),
        "revenue_ge": Account.AnnualRevenue >= 5000,
    }
    out["filters"] = {k: sorted(names(q().filter(f))) for k, f in filters.items()}
    out["filter_text"] = {k: str(f) for k, f in filters.items()}

    # $orderby with two keys.
    out["ordered"] = names(q().order_by(E.desc(), Account.Name.asc()))

    # $select (raw: the selected properties only).
    selected = q().raw(
        {"$filter": f"startswith(Name,'{prefix}')", "$select": "Name,NumberOfEmployees", "$top": "3", "$orderby": "Name"}
    )
    out["selected"] = selected

    # $count: /$count and inline.
    out["count"] = q().count()
    inline = conn.execute_get(url + "Account", {"$filter": f"startswith(Name,'{prefix}')", "$count": "true", "$top": "1"})
    out["inline_count"] = inline.get("@odata.count")

    # PII: hidden for this principal, shown for the PII one.
    out["phones_hidden"] = [r.Phone for r in q().order_by(Account.Name.asc())]
    svc_pii = ODataService(url, auth=HTTPBasicAuth(pii_user, pii_password), reflect_entities=True)
    AccountP = svc_pii.entities["Account"]
    out["phones_shown"] = [
        r.Phone for r in svc_pii.query(AccountP).filter(AccountP.Name.startswith(prefix)).order_by(AccountP.Name.asc())
    ]
    Outbox = svc.entities["WritebackOutbox"]
    out["outbox_fields_hidden"] = [r.Fields for r in svc.query(Outbox)]
    OutboxP = svc_pii.entities["WritebackOutbox"]
    out["outbox_fields_shown"] = [r.Fields for r in svc_pii.query(OutboxP)]
    # A PII property in $filter is refused for the principal without PII.
    try:
        q().filter(Account.Phone == "x").all()
        out["pii_filter_error"] = None
    except Exception as e:  # noqa: BLE001 - the client's error type varies by status
        out["pii_filter_error"] = str(e)

    # A malformed filter: the client reports the service's 400 error.
    try:
        conn.execute_get(url + "Account", {"$filter": "Name eq 'unclosed"})
        out["malformed_error"] = None
    except Exception as e:  # noqa: BLE001
        out["malformed_error"] = str(e)
    r = requests.get(
        url + "Account",
        params={"$filter": "Name eq 'unclosed"},
        auth=HTTPBasicAuth(user, password),
        timeout=30,
    )
    out["malformed_status"] = r.status_code
    out["malformed_body"] = r.json()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
