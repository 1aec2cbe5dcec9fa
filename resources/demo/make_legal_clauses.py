"""Generate resources/demo/legal_clauses.jsonl: contract clauses labelled by type (8 classes).

Written from scratch by the FT Studio project and released under CC0 1.0 (see README.md). Each clause is
composed from a template and vocabulary written here: party names, time spans, amounts, places and
connective phrases vary freely, and words such as "notice", "Agreement", "days" and "party" occur in
several classes, so a model has to read the clause rather than spot one word.

    python resources/demo/make_legal_clauses.py            # rewrites legal_clauses.jsonl (deterministic)
"""
from __future__ import annotations

import json
import random
from pathlib import Path

ROWS_PER_CLASS = 60
SEED = 20240611

V = {
    "party": ["the Supplier", "the Customer", "the Licensor", "the Licensee", "the Contractor", "the Client",
              "the Company", "the Vendor", "the Purchaser", "the Service Provider", "either Party", "each Party"],
    "other": ["the other Party", "the Customer", "the Supplier", "the Licensee", "the Client", "the Company"],
    "days": ["ten (10)", "fifteen (15)", "thirty (30)", "sixty (60)", "ninety (90)", "five (5) business",
             "forty-five (45)", "twenty (20)"],
    "doc": ["this Agreement", "the Agreement", "this Contract", "these Terms", "the Master Services Agreement",
            "this Statement of Work"],
    "lead": ["", "Notwithstanding anything to the contrary, ", "Subject to Section 4, ", "Except as otherwise "
             "provided herein, ", "To the extent permitted by law, ", "For the avoidance of doubt, ",
             "Save as expressly set out in this Agreement, "],
    "amount": ["the fees paid in the twelve (12) months preceding the claim", "one hundred thousand euros "
               "(EUR 100,000)", "the total amount payable under this Agreement", "two times the annual fees",
               "USD 500,000", "the greater of GBP 50,000 and the fees paid"],
    "state": ["the State of New York", "England and Wales", "the State of Delaware", "Germany", "Ontario",
              "the Netherlands", "Singapore", "the State of California", "Switzerland", "Ireland"],
    "city": ["New York", "London", "Wilmington", "Frankfurt", "Toronto", "Amsterdam", "Singapore",
             "San Francisco", "Zurich", "Dublin"],
    "info": ["trade secrets", "customer lists", "pricing information", "source code", "business plans",
             "technical data", "financial information", "personal data", "know-how", "product roadmaps"],
    "event": ["acts of God", "flood", "fire", "earthquake", "war", "terrorism", "epidemic", "pandemic",
              "strikes", "riots", "governmental action", "failure of public utilities", "embargo"],
    "ip": ["patents", "copyrights", "trademarks", "trade secrets", "database rights", "design rights",
           "moral rights", "software"],
    "loss": ["losses", "damages", "liabilities", "costs", "expenses", "fines", "penalties", "judgments"],
    "claim": ["third-party claims", "any claim, suit or proceeding", "claims brought by a third party",
              "actions of any kind"],
    "pay": ["invoices", "all undisputed invoices", "each invoice", "the monthly fees", "the license fee",
            "the annual subscription fee"],
}

TEMPLATES = {
    "termination": [
        "{lead}{party} may terminate {doc} upon {days} days' written notice to {other}.",
        "{lead}{doc} may be terminated by {party} with immediate effect if {other} commits a material breach "
        "and fails to remedy it within {days} days of notice.",
        "{lead}either Party may end {doc} for convenience by giving {days} days' prior written notice.",
        "{doc} shall terminate automatically if {party} becomes insolvent, makes an assignment for the benefit "
        "of creditors or has a receiver appointed.",
        "Upon expiry or termination of {doc}, {party} shall cease all use of the services and return any "
        "materials of {other} within {days} days.",
        "{lead}{party} shall have the right to cancel {doc} without penalty at the end of the initial term.",
        "The rights of {party} to rescind {doc} arise where {other} is in breach and has not cured the default "
        "within {days} days.",
    ],
    "confidentiality": [
        "{lead}{party} shall keep confidential all {info} disclosed by {other} and shall not reveal them to "
        "any third party.",
        "{lead}the receiving party shall use the {info} of the disclosing party solely for the purposes of "
        "{doc} and protect them with at least reasonable care.",
        "Confidential Information includes {info} and {info2}, whether disclosed orally or in writing.",
        "{party} shall not disclose {info} except to its employees who need to know them and are bound by "
        "obligations of secrecy no less strict than those in {doc}.",
        "The obligations of non-disclosure in {doc} survive for {days} months after termination.",
        "{lead}{party} may disclose {info} only where required by law, after giving {other} prompt notice.",
        "{party} shall return or destroy all copies of {info} of {other} on request and certify that it has "
        "done so.",
    ],
    "liability": [
        "{lead}the aggregate liability of {party} under {doc} shall not exceed {amount}.",
        "{lead}in no event shall {party} be liable for indirect, incidental, special or consequential "
        "{loss}, including loss of profits.",
        "Neither Party excludes or limits liability for death or personal injury caused by negligence or "
        "for fraud.",
        "{lead}{party}'s total liability arising out of {doc}, whether in contract, tort or otherwise, is "
        "capped at {amount}.",
        "{party} shall not be responsible for any loss of data, revenue or goodwill suffered by {other}.",
        "The limitations of liability in this section apply even if {party} has been advised of the "
        "possibility of such {loss}.",
        "{lead}the maximum amount recoverable from {party} for all {loss} shall be limited to {amount}.",
    ],
    "indemnification": [
        "{lead}{party} shall indemnify, defend and hold harmless {other} from and against all {loss} arising "
        "from {claim}.",
        "{party} agrees to indemnify {other} against any {loss} resulting from its breach of {doc}.",
        "{lead}{party} will defend {other} against {claim} alleging that the deliverables infringe the rights "
        "of a third party, and pay any {loss} finally awarded.",
        "The indemnified party shall give {party} prompt notice of {claim} and allow {party} sole control of "
        "the defence and settlement.",
        "{party} shall hold {other} harmless from {loss} caused by the negligence or wilful misconduct of its "
        "personnel.",
        "{lead}{party} shall reimburse {other} for all {loss}, including reasonable legal fees, incurred in "
        "connection with {claim}.",
    ],
    "governing_law": [
        "{lead}{doc} shall be governed by and construed in accordance with the laws of {state}.",
        "Any dispute arising out of {doc} shall be subject to the exclusive jurisdiction of the courts of "
        "{city}.",
        "{doc} and any non-contractual obligations arising from it are governed by the law of {state}, "
        "without regard to its conflict of laws rules.",
        "{lead}the parties submit to the jurisdiction of the courts located in {city} for any action "
        "relating to {doc}.",
        "Disputes shall be finally settled by arbitration seated in {city} under the rules then in force, and "
        "the law of {state} shall apply.",
        "The United Nations Convention on Contracts for the International Sale of Goods does not apply to "
        "{doc}, which is governed by the laws of {state}.",
    ],
    "payment": [
        "{lead}{party} shall pay {pay} within {days} days of the invoice date.",
        "{pay} are payable in advance by bank transfer to the account designated by {other}.",
        "{lead}late payments shall bear interest at the rate of one percent (1%) per month until paid in full.",
        "All fees are exclusive of VAT and other taxes, which {party} shall pay in addition at the applicable "
        "rate.",
        "{party} may suspend the services if {pay} remain unpaid {days} days after the due date.",
        "{lead}{party} shall invoice {other} monthly in arrears, and {pay} shall be settled in the currency "
        "stated in the order form.",
        "Any disputed amount shall be notified in writing within {days} days, and {party} shall pay the "
        "undisputed portion of {pay} on time.",
    ],
    "intellectual_property": [
        "{lead}all {ip} and other intellectual property rights in the deliverables shall vest in {party}.",
        "{party} hereby assigns to {other} all right, title and interest in any {ip} created under {doc}.",
        "{lead}nothing in {doc} transfers ownership of the pre-existing {ip} of either Party.",
        "{party} grants {other} a non-exclusive, royalty-free licence to use its {ip} solely to receive the "
        "services.",
        "{other} shall not reverse engineer, decompile or modify the {ip} of {party}.",
        "Each Party retains all rights in its own {ip} and {ip2}; no licence is granted by implication.",
        "{lead}improvements and derivative works of the {ip} shall belong exclusively to {party}.",
    ],
    "force_majeure": [
        "{lead}neither Party shall be liable for any delay or failure to perform caused by {event}, {event2} "
        "or other events beyond its reasonable control.",
        "If a force majeure event such as {event} prevents performance for more than {days} days, either "
        "Party may terminate {doc} by notice.",
        "{party} shall promptly notify {other} of any circumstances, including {event}, that hinder the "
        "performance of its obligations.",
        "{lead}the time for performance shall be extended by a period equal to the delay caused by {event} "
        "or {event2}.",
        "Obligations of {party} are suspended for as long as {event} continues and performance is "
        "impossible, provided it uses reasonable efforts to mitigate the effect.",
        "{lead}a Party affected by {event} is excused from performance to the extent and for the duration of "
        "the disruption.",
    ],
}

# Cross-references appended to some clauses: they name other clause types ("liability", "confidential",
# "terminate", "fees"), so keyword spotting is misleading and the model must weigh the main clause.
TAILS = [", subject to the limitation of liability set out below", ", without prejudice to the payment "
         "obligations of the Customer", ", save for claims covered by the indemnity in Section 9", ", and the "
         "confidentiality obligations shall continue to apply", ", in accordance with the governing law clause",
         ", provided that neither Party may terminate for this reason alone", ", including any fees already "
         "invoiced", ", without affecting the ownership of intellectual property", ", except in the case of a "
         "force majeure event", ", notwithstanding any earlier notice of termination"]
TAIL_SHARE = 0.4


def _fill(template: str, rng: random.Random) -> str:
    values = {k: rng.choice(v) for k, v in V.items()}
    for key in ("info", "event", "ip"):
        values[key + "2"] = rng.choice([x for x in V[key] if x != values[key]])
    if values["party"] in values["other"]:
        values["other"] = "the other Party"
    text = template.format(**values)
    if rng.random() < TAIL_SHARE:
        text = text[:-1] + rng.choice(TAILS) + "."
    return text[0].upper() + text[1:]


def make_rows(rows_per_class: int = ROWS_PER_CLASS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    for label, templates in TEMPLATES.items():
        made = 0
        while made < rows_per_class:
            text = _fill(rng.choice(templates), rng)
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
                made += 1
    rng.shuffle(rows)
    return rows


def main() -> None:
    out = Path(__file__).with_name("legal_clauses.jsonl")
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for row in make_rows():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {out} ({ROWS_PER_CLASS * len(TEMPLATES)} rows)")


if __name__ == "__main__":
    main()
