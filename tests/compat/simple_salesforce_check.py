"""Third-party compatibility check: the unmodified `simple-salesforce` library against the sfsync
emulator. The only differences from talking to Salesforce are the URL and the CA: the library's
hard-coded `https://login.salesforce.com` is routed to the emulator by a requests transport adapter
(what a DNS entry would do), and the emulator's CA is trusted.

Usage: python simple_salesforce_check.py CREDENTIALS_JSON
Exits non-zero with a message naming the failed check.
"""

import csv
import io
import json
import os
import sys
import tempfile

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)

VERSION = "62.0"


class LoginHostAdapter(HTTPAdapter):
    """Sends requests for https://login.salesforce.com to the emulator (a DNS override)."""

    def __init__(self, base_url):
        super().__init__()
        self.base_url = base_url.rstrip("/")

    def send(self, request, **kwargs):
        request.url = request.url.replace("https://login.salesforce.com", self.base_url, 1)
        return super().send(request, **kwargs)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok  {what}")


def session_for(creds):
    s = requests.Session()
    s.verify = creds["ca_file"]
    s.mount("https://login.salesforce.com", LoginHostAdapter(creds["instance_url"]))
    return s


def main(path):
    creds = json.load(open(path))
    # How a user makes Python tools trust the emulator's CA (requests reads it and lets it
    # override a session's `verify`).
    os.environ["REQUESTS_CA_BUNDLE"] = creds["ca_file"]
    os.environ.pop("CURL_CA_BUNDLE", None)

    # 1. SOAP partner login, as simple-salesforce does by default.
    sf = Salesforce(
        username=creds["username"],
        password=creds["password"],
        security_token=creds["security_token"],
        domain="login",
        version=VERSION,
        session=session_for(creds),
    )
    check(sf.sf_instance.startswith("127.0.0.1:"), "SOAP login gives the emulator as instance")

    # 2. JWT bearer login with the connected app's key.
    session_id, instance = SalesforceLogin(
        username=creds["username"],
        consumer_key=creds["client_id"],
        privatekey_file=creds["jwt_private_key_file"],
        domain="login",
        session=session_for(creds),
    )
    check(len(session_id) > 20 and instance.startswith("127.0.0.1:"), "JWT bearer login")

    # 3. Username-password OAuth with the connected app.
    session_id2, _ = SalesforceLogin(
        username=creds["username"],
        password=creds["password"],
        consumer_key=creds["client_id"],
        consumer_secret=creds["client_secret"],
        domain="login",
        session=session_for(creds),
    )
    check(len(session_id2) > 20, "username-password OAuth login")

    # Describe.
    g = sf.describe()
    names = {o["name"] for o in g["sobjects"]}
    check({"Account", "Contact", "Case", "Service_Request__c"} <= names, "global describe lists objects")
    d = sf.Account.describe()
    fields = {f["name"]: f for f in d["fields"]}
    check(fields["Id"]["type"] == "id" and fields["BillingAddress"]["type"] == "address", "Account describe")
    check(fields["BillingCity"]["compoundFieldName"] == "BillingAddress", "compound field metadata")

    # Records.
    r = sf.Account.create({"Name": "Compat Agency", "Industry": "Government", "External_Id__c": "COMPAT-1"})
    check(r["success"] and r["id"].startswith("001") and len(r["id"]) == 18, "create returns an 18-char id")
    acc_id = r["id"]
    got = sf.Account.get(acc_id)
    check(got["Name"] == "Compat Agency" and got["attributes"]["type"] == "Account", "get by id")
    status = sf.Account.update(acc_id, {"Phone": "+1 555 0100"})
    check(status == 204, "update answers 204")
    check(sf.Account.get(acc_id)["Phone"] == "+1 555 0100", "update is visible")
    by_ext = sf.Account.get_by_custom_id("External_Id__c", "COMPAT-1")
    check(by_ext["Id"] == acc_id, "get by external id")
    up = sf.Account.upsert("External_Id__c/COMPAT-2", {"Name": "Upserted Agency"})
    check(up == 201, "upsert by external id creates (201)")
    up2 = sf.Account.upsert("External_Id__c/COMPAT-2", {"Name": "Upserted Agency 2"})
    check(up2 in (200, 204), "upsert by external id updates (200)")

    # SOQL with paging.
    recs = [{"attributes": {"type": "Contact"}, "LastName": f"Compat{i}", "AccountId": acc_id} for i in range(200)]
    res = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": recs})
    check(len(res) == 200 and all(x["success"] for x in res), "sObject Collections create of 200")
    res = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": recs[:50]})
    check(all(x["success"] for x in res), "a second collection of 50")
    q = sf.query("SELECT Id, LastName, Account.Name FROM Contact WHERE AccountId = '%s'" % acc_id,
                 headers={"Sforce-Query-Options": "batchSize=200"})
    check(q["totalSize"] == 250 and not q["done"] and q["nextRecordsUrl"].startswith("/services/data/"),
          "query pages with nextRecordsUrl")
    all_rows = sf.query_all("SELECT Id, LastName, Account.Name FROM Contact WHERE AccountId = '%s'" % acc_id)
    check(len(all_rows["records"]) == 250, "query_all follows nextRecordsUrl")
    check(all_rows["records"][0]["Account"]["Name"] == "Compat Agency", "parent relationship field")
    n = sum(1 for _ in sf.query_all_iter("SELECT Id FROM Contact WHERE AccountId = '%s'" % acc_id))
    check(n == 250, "query_all_iter")

    # Delete, queryAll and errors.
    victim = sf.Account.create({"Name": "To Delete"})["id"]
    check(sf.Account.delete(victim) == 204, "delete answers 204")
    try:
        sf.Account.get(victim)
        check(False, "a deleted record is not readable")
    except SalesforceResourceNotFound as e:
        check("ENTITY_IS_DELETED" in str(e.content), "deleted record → ENTITY_IS_DELETED")
    qa = sf.query_all("SELECT Id, IsDeleted FROM Account WHERE Id = '%s'" % victim, include_deleted=True)
    check(qa["totalSize"] == 1 and qa["records"][0]["IsDeleted"] is True, "queryAll shows deleted rows")
    try:
        sf.query("SELEC Id FROM Account")
        check(False, "bad SOQL is rejected")
    except SalesforceMalformedRequest as e:
        check(e.content[0]["errorCode"] == "MALFORMED_QUERY", "bad SOQL → MALFORMED_QUERY")
    try:
        sf.Account.create({"Nope__c": 1, "Name": "x"})
        check(False, "unknown field is rejected")
    except SalesforceMalformedRequest as e:
        check(e.content[0]["errorCode"] == "INVALID_FIELD", "unknown field → INVALID_FIELD")

    limits = sf.limits()
    check(limits["DailyApiRequests"]["Max"] > 0, "limits resource")
    check(sf.api_usage.get("api-usage") is not None, "Sforce-Limit-Info parsed by the library")

    # Bulk API 2.0 ingest and query.
    rows = [{"External_Id__c": f"BULK-{i}", "Name": f"Bulk Agency {i}", "Description": "line one\nline, \"two\""}
            for i in range(1200)]
    result = sf.bulk2.Account.upsert(records=rows, external_id_field="External_Id__c")
    check(sum(int(x["numberRecordsProcessed"]) for x in result) == 1200
          and sum(int(x["numberRecordsFailed"]) for x in result) == 0, "Bulk 2.0 upsert of 1,200 rows")
    pages = list(sf.bulk2.Account.query(
        "SELECT Id, Name, Description FROM Account WHERE External_Id__c LIKE 'BULK-%'", max_records=500))
    parsed = [r for p in pages for r in csv.DictReader(io.StringIO(p))]
    check(len(pages) == 3 and len(parsed) == 1200, "Bulk 2.0 query pages by maxRecords (3 pages)")
    check(all(r["Description"] == "line one\nline, \"two\"" for r in parsed), "Bulk CSV quoting round trip")
    with tempfile.TemporaryDirectory() as d:
        sf.bulk2.Account.download(
            "SELECT Id FROM Account WHERE External_Id__c LIKE 'BULK-%'", path=d, max_records=1000)

    # An expired session is reported as such.
    bad = Salesforce(instance_url=creds["instance_url"], session_id="00Dbad!token", version=VERSION,
                     session=session_for(creds))
    try:
        bad.query("SELECT Id FROM Account")
        check(False, "an invalid session is rejected")
    except SalesforceExpiredSession:
        check(True, "invalid session → SalesforceExpiredSession (401 INVALID_SESSION_ID)")

    print("simple-salesforce compatibility: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
