"""Generate the deterministic support-ticket demo data set under ``examples/support_tickets/``.

Why this task: support-ticket triage asks for *structured JSON output* (``category``, ``priority``,
``product``) whose exact label vocabulary (``account_access``, not "login problem"; ``thermapilot``, not
"the thermostat") and whose priority rules (impact decides priority, not how loudly the customer asks) are
easy to learn from a few hundred examples but cannot be guessed zero-shot. A fine-tuned small model should
therefore clearly beat prompting the same model, while the markdown docs give a fair RAG baseline
something real to retrieve (product features, the SLA's priority definitions in prose).

Everything is stdlib-only and seeded with ``random.Random(20261129)``, so the output is byte-identical on
every run. Usage::

    python scripts/make_demo_data.py             # (re)write examples/support_tickets/
    python scripts/make_demo_data.py --check     # exit 1 and list files if the committed copy is stale
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

SEED = 20261129
N_ROWS = 2000
N_EXACT_DUPES = 20
N_NEAR_DUPES = 20
PII_RATE = 0.01
TYPO_RATE = 0.012
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "examples" / "support_tickets"

CATEGORIES = ["billing", "refund", "bug", "account_access", "outage", "feature_request", "how_to"]
PRIORITIES = ["low", "medium", "high", "urgent"]

# ---------------------------------------------------------------------------------------------------------
# Products. Labels are lowercase slugs; tickets mention a product by name, nickname or a feature of it.
# ---------------------------------------------------------------------------------------------------------
PRODUCTS: dict[str, dict[str, list[str] | str]] = {
    "ledgerly": {
        "name": "Ledgerly",
        "nicks": ["my banking app", "the Ledgerly app", "the bank app", "my Ledgerly card app"],
        "features": ["instant transfers", "bill pay", "savings pots", "mobile check deposit", "card freeze",
                     "spending insights"],
        "actions": ["send a transfer", "deposit a check", "pay a bill", "freeze my card",
                    "move money into a savings pot", "add a new payee"],
        "nouns": ["transactions", "statements", "payees", "savings pots"],
        "plan": "Ledgerly Plus",
        "amounts": ["$4.99", "$9.98", "$49.90", "$4.99"],
        "errors": ["LG-104", "LG-221", "LG-309", "LG-412"],
        "versions": ["5.2.0", "5.2.1", "5.3.0", "5.3.2"],
        "devices": ["iPhone 13", "iPhone 15", "Pixel 8", "Galaxy S23", "iPad"],
    },
    "thermapilot": {
        "name": "ThermaPilot",
        "nicks": ["my thermostat", "the smart thermostat", "the ThermaPilot unit", "the wall thermostat"],
        "features": ["eco schedule", "geofencing", "room sensors", "humidity control", "energy reports",
                     "vacation hold"],
        "actions": ["change the temperature from my phone", "set a heating schedule", "pair a room sensor",
                    "turn on the heat remotely", "switch to cooling mode", "set up vacation hold"],
        "nouns": ["schedules", "temperature history", "energy reports", "room sensors"],
        "plan": "ThermaPilot Care",
        "amounts": ["$2.99", "$29.99", "$5.98", "$2.99"],
        "errors": ["TP-E3", "TP-E7", "TP-E12", "TP-E21"],
        "versions": ["fw 3.8", "fw 3.9.1", "fw 4.0", "app 2.14"],
        "devices": ["Android phone", "iPhone", "ThermaPilot T2", "ThermaPilot Mini", "the hallway unit"],
    },
    "trackwise": {
        "name": "Trackwise",
        "nicks": ["our project board", "the task tracker", "our PM tool", "the Trackwise board"],
        "features": ["kanban boards", "sprint planning", "the Gantt timeline", "time tracking",
                     "task dependencies", "the Slack integration"],
        "actions": ["create a task", "move cards between columns", "export the Gantt chart",
                    "invite a teammate", "log time on a task", "close a sprint"],
        "nouns": ["tasks", "projects", "boards", "sprints"],
        "plan": "Trackwise Team",
        "amounts": ["$8.00", "$96.00", "$240.00", "$480.00"],
        "errors": ["TW-401", "TW-503", "TW-718", "TW-902"],
        "versions": ["2026.3", "2026.4", "2026.4.1", "2026.5"],
        "devices": ["Chrome browser", "Firefox browser", "work laptop", "MacBook", "Windows PC"],
    },
    "shieldline": {
        "name": "Shieldline",
        "nicks": ["my VPN", "the VPN app", "the Shieldline client", "the VPN"],
        "features": ["the kill switch", "split tunneling", "exit servers", "the ad blocker", "WireGuard mode",
                     "multi-hop"],
        "actions": ["connect to a server", "turn on the kill switch", "switch exit countries",
                    "stream through the tunnel", "add a device slot", "enable split tunneling"],
        "nouns": ["device slots", "saved servers", "connection profiles", "exit locations"],
        "plan": "Shieldline Pro",
        "amounts": ["$9.99", "$59.99", "$19.98", "$9.99"],
        "errors": ["SL-17", "SL-42", "SL-58", "SL-63"],
        "versions": ["7.1", "7.2.3", "7.3", "7.3.1"],
        "devices": ["Windows laptop", "MacBook", "Android phone", "iPhone", "router"],
    },
    "snapvault": {
        "name": "Snapvault",
        "nicks": ["my photo backup", "the photo cloud", "the Snapvault app", "my photo storage"],
        "features": ["camera roll backup", "shared albums", "face grouping", "RAW storage", "memories",
                     "photo restore"],
        "actions": ["upload photos", "share an album", "restore deleted photos", "download my library",
                    "back up videos", "invite family to an album"],
        "nouns": ["photos", "albums", "videos", "shared albums"],
        "plan": "Snapvault Plus",
        "amounts": ["$2.99", "$9.99", "$99.99", "$2.99"],
        "errors": ["SV-201", "SV-310", "SV-415", "SV-522"],
        "versions": ["9.0", "9.1.2", "9.2", "9.2.4"],
        "devices": ["iPhone", "Pixel 7", "iPad", "Windows PC", "Galaxy S22"],
    },
}

# ---------------------------------------------------------------------------------------------------------
# Issue sentences per category (priority-neutral) and priority cues per (category, priority).
# The cue sentence carries the priority, following the rules written up in docs/sla-and-priorities.md.
# ---------------------------------------------------------------------------------------------------------
ISSUES: dict[str, list[str]] = {
    "billing": [
        "I have a question about my latest {plan} invoice.",
        "My {p} bill this month doesn't match what I expected.",
        "The {plan} charge on my card looks different from last month.",
        "Can someone explain the {amt} charge from {p}?",
        "I was billed for {plan} but I thought I was still on the free tier.",
        "My invoice for {p} shows a tax line I don't understand.",
        "I updated the payment card on {p} and now the billing page shows error {err}.",
        "The {plan} renewal went through at a different price than advertised.",
        "I need a corrected invoice for {p} with my company name on it.",
        "Why did {p} bill me {amt} on the {day}?",
    ],
    "refund": [
        "I'd like a refund for my {plan} subscription.",
        "Please refund the {amt} I paid for {p}.",
        "I cancelled {p} and would like my last payment refunded.",
        "{p} didn't work for what I needed, so I'm asking for my money back.",
        "Can I get a refund for the annual {plan} plan? I barely used it.",
        "I bought {plan} by accident and want a refund.",
        "Requesting a refund for {plan}, {f} never worked for me.",
        "How do I get my money back for {p}? I'm not going to keep using it.",
        "I want a refund for the {amt} charge, I don't use {p} anymore.",
    ],
    "bug": [
        "{p} crashes when I try to {a}.",
        "The {f} screen shows a blank page on my {dev}.",
        "Since updating to {ver}, {f} doesn't save my changes.",
        "I get error {err} whenever I {a}.",
        "The {f} toggle in {p} keeps switching itself off.",
        "{p} shows the wrong dates on my {n}.",
        "Tapping {f} in {p} does nothing on my {dev}.",
        "The order of my {n} in {p} is scrambled after the last update.",
        "{p} freezes and then closes when I open {f}.",
        "Every time I {a}, {p} shows error {err} and the spinner never stops.",
    ],
    "account_access": [
        "I can't log in to {p}.",
        "{p} says my password is wrong even though I just reset it.",
        "My 2FA codes for {p} are being rejected.",
        "I got a new phone and lost my authenticator for {p}.",
        "The password reset email from {p} never arrives.",
        "{p} locked my account after a few failed sign-in attempts.",
        "I can't get past the verification step when I sign in to {p}.",
        "Sign in with Apple stopped working for {p}.",
        "{p} keeps logging me out and then won't accept my password.",
        "The SMS code for {p} never shows up on my {dev}.",
    ],
    "outage": [
        "{p} is down.",
        "{p} won't load, it just spins forever.",
        "I'm getting 503 errors from {p}.",
        "Is {p} having an outage? Nothing is syncing.",
        "{f} has stopped responding completely.",
        "The {p} servers seem unreachable from {region}.",
        "The {p} status page says operational but nothing works.",
        "Everything in {p} times out.",
        "{p} has been extremely slow for the last hour, every screen takes a minute to load.",
        "{p} says 'service unavailable' every time I open it.",
    ],
    "feature_request": [
        "It would be great if {p} supported dark mode.",
        "Please add an export option for {n} in {p}.",
        "Could {f} get a weekly summary email?",
        "I'd love to see {f} on the Apple Watch.",
        "Any plans to let {p} share {n} with family members?",
        "Suggestion: let me rename and color-code my {n} in {p}.",
        "Would you consider adding a home-screen widget for {f}?",
        "Feature idea: a one-tap shortcut to {a}.",
        "Please make {f} available in the web version of {p} too.",
        "It would help if {p} had a public API for {n}.",
    ],
    "how_to": [
        "How do I {a} in {p}?",
        "Where do I find the settings for {f} in {p}?",
        "Is there a way to turn on {f} on my {dev}?",
        "Can I use {p} on more than one device?",
        "What's the difference between the free tier and {plan}?",
        "How do I export my {n} from {p}?",
        "I'm new to {p}, how does {f} work?",
        "Is it possible to {a} from the web version of {p}?",
        "How can I set up {f} for a second person?",
        "What's the easiest way to {a}?",
    ],
}

CUES: dict[tuple[str, str], list[str]] = {
    ("billing", "medium"): [
        "It's not a big amount, I just want it corrected.",
        "Please look into it when you can, the difference is small.",
        "I'd like it sorted before the next billing cycle.",
        "It's only a few dollars off but I'd like to understand it.",
    ],
    ("billing", "high"): [
        "I've been charged twice for the same month.",
        "The charge is more than double what I normally pay.",
        "The payment failed and now all my {plan} features are locked.",
        "I see two identical charges for {amt} on my statement.",
    ],
    ("billing", "urgent"): [
        "There are {k} charges I never authorized and the money is gone from my account.",
        "Someone is being charged on my card through {p} and it wasn't me.",
        "The charges overdrew my bank account and now I'm paying overdraft fees.",
        "I did not make these payments, {k} of them went through overnight.",
    ],
    ("refund", "low"): [
        "I know it's outside the 30-day refund window, so I understand if you can't.",
        "It's been a couple of months, but I thought I'd ask anyway.",
        "I realise I'm past the refund window, just asking as a goodwill gesture.",
    ],
    ("refund", "medium"): [
        "I signed up {d} days ago, so I should be within the 30-day window.",
        "I bought it {d} days ago, so it's within your refund period.",
        "It was purchased last week, please send it back to the original card.",
    ],
    ("refund", "high"): [
        "Support already promised this refund {w} weeks ago and it never arrived.",
        "I was charged again after cancelling, so you now owe me two payments.",
        "I cancelled before the renewal date and was still charged.",
    ],
    ("bug", "low"): [
        "It's only a visual glitch, everything else works.",
        "Not blocking anything, just wanted to report it.",
        "Minor thing, it's purely cosmetic.",
        "Everything still works, it just looks wrong.",
    ],
    ("bug", "medium"): [
        "Restarting the app works around it for a while.",
        "I can get around it by using the web version, but it's annoying.",
        "It happens maybe once a day, and retrying usually works.",
        "There's a workaround, but I have to redo things each time.",
    ],
    ("bug", "high"): [
        "I can't {a} at all now.",
        "It happens every single time and I have no workaround.",
        "I can't use {p} for anything right now because of it.",
        "Nothing I try gets around it, I'm completely stuck.",
    ],
    ("bug", "urgent"): [
        "It wiped my {n}, they're just gone.",
        "Some of my {n} disappeared afterwards and I can't get them back.",
        "It deleted the {n} for our whole team.",
        "Data is being lost, my {n} from the last month vanished.",
    ],
    ("account_access", "medium"): [
        "I'm still signed in on my laptop, so I can get by for now.",
        "I can still use it on another device in the meantime.",
        "My old session still works on my tablet, but I'd like this fixed.",
    ],
    ("account_access", "high"): [
        "I'm completely locked out.",
        "I haven't been able to get in {since}.",
        "I can't get in on any device.",
        "I have no way into my account at all now.",
    ],
    ("account_access", "urgent"): [
        "I got a sign-in alert from a country I've never been to and my password was changed.",
        "I think someone else got into my account, the email on it was changed and it wasn't me.",
        "There is activity on my account that isn't mine, I think I've been hacked.",
        "Someone changed my 2FA phone number, it wasn't me.",
    ],
    ("outage", "high"): [
        "As far as I can tell it's only me.",
        "Other people I know say theirs works, so maybe it's just my account.",
        "It's intermittent, it works every few tries.",
        "Only my account seems affected.",
    ],
    ("outage", "urgent"): [
        "Nobody in our {group} can use it, about {k0} people.",
        "It's the same for everyone in our {group}, all {k0} of us.",
        "My friends and coworkers all report the same thing.",
        "It's down for everyone we know in {region}.",
    ],
    ("feature_request", "low"): [
        "Just a suggestion.",
        "Thanks for considering it.",
        "No rush obviously.",
        "Keep up the good work!",
    ],
    ("how_to", "low"): [
        "Just curious.",
        "No rush.",
        "I couldn't find it in the help pages.",
        "Thanks in advance.",
    ],
    ("how_to", "medium"): [
        "I need to get this set up before {deadline}.",
        "I need it working for a client meeting {deadline}.",
        "I have to have this done by {deadline}.",
    ],
}

# Priority mix per category (weights over PRIORITIES), chosen so urgent lands around 10%.
PRIORITY_WEIGHTS: dict[str, list[float]] = {
    "billing": [0.0, 0.5, 0.4, 0.1],
    "refund": [0.3, 0.5, 0.2, 0.0],
    "bug": [0.3, 0.35, 0.25, 0.1],
    "account_access": [0.0, 0.25, 0.55, 0.2],
    "outage": [0.0, 0.0, 0.65, 0.35],
    "feature_request": [1.0, 0.0, 0.0, 0.0],
    "how_to": [0.75, 0.25, 0.0, 0.0],
}
# Only these categories may name the product by a feature alone ("the kill switch feature crashes ...").
FEATURE_REF_CATEGORIES = {"bug", "outage", "feature_request", "how_to"}
# Categories whose default priority holds even without a cue sentence.
CUE_OPTIONAL = {("feature_request", "low"), ("how_to", "low")}

GREETINGS = ["Hi,", "Hello,", "Hey team,", "Hi support,", "Good morning,", "Hi there,", "Hey,", "Hello team,",
             "Dear support,", "Hiya,"]
CONTEXT = [
    "I've been using {p} for about {y} years.",
    "I'm on the {plan} plan.",
    "This is on my {dev}.",
    "Quick one.",
    "I'm writing about {p}.",
    "Long-time customer here.",
    "This is about my {p} account.",
    "Not sure if this is the right place.",
]
_TECH_EXTRAS = [
    "I'm on version {ver}.",
    "I already tried reinstalling.",
    "I tried it on my {dev} as well.",
    "Screenshot attached.",
    "I checked the FAQ but couldn't find anything.",
    "It first happened {since_short}.",
    "I logged out and back in, no change.",
    "Same thing on wifi and mobile data.",
]
_MONEY_EXTRAS = [
    "My order number is {order}.",
    "Screenshot of the statement attached.",
    "I checked the FAQ but couldn't find anything.",
    "The account is under the same email I'm writing from.",
]
EXTRAS: dict[str, list[str]] = {
    "billing": _MONEY_EXTRAS,
    "refund": _MONEY_EXTRAS,
    "bug": _TECH_EXTRAS,
    "account_access": [e for e in _TECH_EXTRAS if "logged out" not in e],
    "outage": _TECH_EXTRAS,
    "feature_request": ["I use it every day.", "A friend of mine asked for the same thing."],
    "how_to": ["I checked the FAQ but couldn't find anything.", "I'm on version {ver}.", "Device: {dev}."],
}
NOISE = ["Please help ASAP!!", "URGENT!!!", "This is really frustrating.", "Please fix this!",
         "I need an answer today.", "Very disappointed."]
CLOSINGS = ["Thanks.", "Thanks in advance!", "Appreciate the help.", "Cheers.", "Regards.", "Thank you!",
            "Let me know.", "Thanks for your help.", "Any help appreciated."]
FIRST_NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Diego", "Priya", "Sam", "Olu", "Marta", "Jonas",
               "Fatima", "Chris", "Noor", "Ben", "Ines", "Ravi", "Elif", "Max", "Yuki"]
LAST_NAMES = ["Example", "Sample", "Tester", "Demo", "Placeholder", "Mock"]
SIGNATURES = ["- {first}", "{first} {initial}.", "Sent from my phone", "Best, {first}", "{first}",
              "Thanks, {first}"]
REGIONS = ["Germany", "the UK", "Brazil", "Texas", "Ontario", "Japan", "the east coast", "Spain"]
GROUPS = ["office", "team", "company", "building", "household"]
SINCE = ["since yesterday", "since Monday", "for two days", "since this morning", "for a week",
         "since the update"]
SINCE_SHORT = ["yesterday", "last week", "on Monday", "this morning", "after the update"]
DEADLINES = ["Friday", "tomorrow", "the end of the week", "Monday morning", "my trip on Thursday", "the 1st"]
DAYS = ["1st", "3rd", "5th", "12th", "15th", "21st", "28th"]

# Near-duplicates swap exactly one of these neutral words for its partner.
SWAPS = {"Hi,": "Hello,", "Hello,": "Hi,", "Thanks.": "Thank you.", "Cheers.": "Thanks.", "really": "very",
         "phone": "mobile", "Regards.": "Best regards.", "twice.": "two times.", "Hey,": "Hi,",
         "Quick": "Short"}


def _product_ref(rng: random.Random, prod: dict, category: str) -> str:
    r = rng.random()
    if r < 0.65:
        return prod["name"]
    if r < 0.87 or category not in FEATURE_REF_CATEGORIES:
        return rng.choice(prod["nicks"])
    feat = rng.choice(prod["features"])
    return feat if feat.startswith("the ") else f"the {feat} feature"


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _typos(rng: random.Random, text: str) -> str:
    def mangle(m: re.Match[str]) -> str:
        word = m.group(0)
        if rng.random() >= TYPO_RATE:
            return word
        i = rng.randrange(1, len(word) - 1)
        op = rng.randrange(3)
        if op == 0:  # swap two neighbours
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if op == 1:  # drop a letter
            return word[:i] + word[i + 1 :]
        return word[:i] + word[i] + word[i:]  # double a letter

    return re.sub(r"[A-Za-z]{5,}", mangle, text)


def _fill(template: str, slots: dict[str, str]) -> str:
    text = template.format(**slots)
    # "my {p}" with p = "the Ledgerly app" -> "my Ledgerly app"
    return _cap(re.sub(r"\b([Mm]y|[Tt]he|[Oo]ur) (?:my|the|our) ", r"\1 ", text))


def make_ticket(rng: random.Random) -> tuple[str, dict[str, str]]:
    """One ticket text and its triage record."""
    product = rng.choice(list(PRODUCTS))
    prod = PRODUCTS[product]
    category = rng.choice(CATEGORIES)
    priority = rng.choices(PRIORITIES, weights=PRIORITY_WEIGHTS[category])[0]
    first = rng.choice(FIRST_NAMES)
    slots = {
        "p": _product_ref(rng, prod, category),
        "f": rng.choice(prod["features"]),
        "a": rng.choice(prod["actions"]),
        "n": rng.choice(prod["nouns"]),
        "plan": prod["plan"],
        "amt": rng.choice(prod["amounts"]),
        "err": rng.choice(prod["errors"]),
        "ver": rng.choice(prod["versions"]),
        "dev": rng.choice(prod["devices"]),
        "day": rng.choice(DAYS),
        "region": rng.choice(REGIONS),
        "group": rng.choice(GROUPS),
        "since": rng.choice(SINCE),
        "since_short": rng.choice(SINCE_SHORT),
        "deadline": rng.choice(DEADLINES),
        "k": str(rng.randint(2, 9)),
        "k0": str(rng.choice([12, 15, 20, 30, 40, 60, 120])),
        "d": str(rng.randint(2, 25)),
        "w": str(rng.randint(2, 6)),
        "y": str(rng.randint(2, 6)),
        "order": f"{prod['name'][:2].upper()}-{rng.randint(100000, 999999)}",
    }

    body = [_fill(rng.choice(ISSUES[category]), slots)]
    if (category, priority) not in CUE_OPTIONAL or rng.random() < 0.5:
        cue = _fill(rng.choice(CUES[(category, priority)]), slots)
        if rng.random() < 0.15:  # glue issue and cue into one sentence
            joiner = ", " if rng.random() < 0.5 else " - "
            lowered = cue if cue.startswith(("I ", "I'")) else cue[0].lower() + cue[1:]
            body[0] = body[0].rstrip(".?!") + joiner + lowered
        else:
            body.append(cue)
    for extra in rng.sample(EXTRAS[category], k=rng.choices([0, 1, 2], weights=[0.5, 0.35, 0.15])[0]):
        body.insert(rng.randint(1, len(body)), _fill(extra, slots))
    if rng.random() < 0.35:
        body.insert(0, _fill(rng.choice(CONTEXT), slots))
    if rng.random() < 0.05:  # customer-stated urgency never changes the label
        body.append(rng.choice(NOISE))
    if rng.random() < PII_RATE:
        if rng.random() < 0.5:
            email = f"{first.lower()}.{rng.choice(LAST_NAMES).lower()}@example.com"
            body.append(f"You can reach me at {email}.")
        else:
            body.append(f"Call me on +1-555-01{rng.randint(0, 99):02d} if that's easier.")
    closed = rng.random() < 0.45
    if closed:
        body.append(rng.choice(CLOSINGS))

    text = " ".join(body)
    sep = "\n" if rng.random() < 0.3 else " "
    if rng.random() < 0.55:
        text = rng.choice(GREETINGS) + sep + text
    if rng.random() < 0.35:
        options = [sig for sig in SIGNATURES if not (closed and "," in sig)]
        sig = rng.choice(options).format(first=first, initial=rng.choice("ABCDEFGHJKLMNPRSTW"))
        text = text + sep + sig
    text = _typos(rng, text)
    case = rng.random()
    if case < 0.04:
        text = text.lower()
    elif case < 0.05:
        text = text.upper()
    return text, {"category": category, "priority": priority, "product": product}


def _near_duplicate(rng: random.Random, text: str) -> str | None:
    tokens = text.split(" ")
    spots = [i for i, tok in enumerate(tokens) if tok in SWAPS]
    if not spots:
        return None
    i = rng.choice(spots)
    tokens[i] = SWAPS[tokens[i]]
    return " ".join(tokens)


def make_rows(rng: random.Random) -> list[dict[str, str]]:
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    while len(rows) < N_ROWS - N_EXACT_DUPES - N_NEAR_DUPES:
        text, label = make_ticket(rng)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"input": text, "output": json.dumps(label)})
    extra = [dict(row) for row in rng.sample(rows, N_EXACT_DUPES)]
    near: list[dict[str, str]] = []
    while len(near) < N_NEAR_DUPES:
        row = rng.choice(rows)
        changed = _near_duplicate(rng, row["input"])
        if changed is not None and changed not in seen:
            seen.add(changed)
            near.append({"input": changed, "output": row["output"]})
    rows = rows + extra + near
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Documentation pages (static text, consistent with the products, features and priority rules above).
# ---------------------------------------------------------------------------------------------------------
DOCS: dict[str, str] = {
    "ledgerly-troubleshooting.md": """\
# Ledgerly troubleshooting and FAQ

Ledgerly is Brightfield's mobile banking app for iPhone, iPad and Android. The current
release line is 5.3; versions older than 5.2.0 no longer receive fixes.

## The app crashes or shows a blank screen

1. Update to the latest 5.3.x release from your app store.
2. Force-close Ledgerly and open it again.
3. If the problem is limited to one screen (for example spending insights), sign out
   and back in to refresh cached data.
4. Still broken? Contact support with your app version and device model.

## Error codes

- **LG-104**: the session expired. Sign in again.
- **LG-221**: a transfer was declined by the receiving bank. Check the payee details.
- **LG-309**: mobile check deposit could not read the check. Retake the photo in good
  light on a dark background.
- **LG-412**: the payment card on file for Ledgerly Plus was declined.

## Instant transfers and bill pay

Instant transfers arrive within minutes, 24/7. Bill pay payments are sent on the next
business day. A transfer that shows "pending" for more than 2 hours should be reported.

## Card freeze

Card freeze blocks new card payments immediately. Subscriptions that were already
authorised may still go through; freezing is not a replacement for reporting fraud.

## Savings pots

You can create up to 10 savings pots. Moving money into a pot is instant and free.

## I see a payment I don't recognise

Freeze your card in the app and contact support straight away. Unrecognised payments
are treated as the highest priority (see "SLA and priority definitions").
""",
    "thermapilot-troubleshooting.md": """\
# ThermaPilot troubleshooting and FAQ

ThermaPilot is a smart thermostat (models T2 and Mini) controlled from the ThermaPilot
app. Firmware updates install automatically overnight; the current firmware is 4.0.

## The thermostat shows an error code

- **TP-E3**: no wifi connection. Move the router closer or use the 2.4 GHz network.
- **TP-E7**: a room sensor battery is low. Replace the CR2032 cell.
- **TP-E12**: the HVAC system did not respond. Check the breaker and wiring.
- **TP-E21**: firmware update failed. The unit retries the next night.

## The eco schedule keeps changing

The eco schedule learns from manual changes for the first two weeks. If it keeps
switching itself off, turn off "auto-adjust" under Settings > Schedules.

## Geofencing does not switch to away mode

Geofencing needs location access set to "always" for the ThermaPilot app on every
phone in the household. Vacation hold overrides geofencing while it is active.

## Pairing room sensors

Hold the button on the sensor for 5 seconds until the light blinks blue, then choose
Add sensor in the app. Each thermostat supports up to 8 room sensors.

## Energy reports and humidity control

Energy reports are generated every Monday and are part of ThermaPilot Care. Humidity
control requires a compatible humidifier connected to the T2.

## I can't change the temperature from my phone

Check the status page first. If the service is up, restart the thermostat from
Settings > Device > Restart. The thermostat keeps following its schedule offline.
""",
    "trackwise-troubleshooting.md": """\
# Trackwise troubleshooting and FAQ

Trackwise is Brightfield's project tool for teams: kanban boards, sprint planning,
the Gantt timeline, time tracking and task dependencies. It runs in Chrome, Firefox
and Safari, and as a desktop app for Mac and Windows.

## Error codes

- **TW-401**: your session expired or your seat was removed by a workspace admin.
- **TW-503**: the service is temporarily unavailable; check the status page.
- **TW-718**: a task dependency would create a loop and was rejected.
- **TW-902**: the export is too large; export one project at a time.

## Cards won't move between columns

Columns can have work-in-progress limits. A full column rejects new cards. Ask a
board admin to raise the limit or move a card out first.

## Exporting the Gantt chart

Open the Gantt timeline, choose Export and pick PDF or PNG. Exports include only the
visible date range.

## Time tracking

Log time from the task panel or start the timer. Time entries can be edited for 30
days; after that they are locked for reporting.

## The Slack integration stopped posting

Re-authorise the integration under Workspace settings > Integrations. Slack tokens
expire when the person who connected them leaves the workspace.

## Inviting teammates

Trackwise Team is billed per seat. Invited teammates use a seat as soon as they
accept the invitation.
""",
    "shieldline-troubleshooting.md": """\
# Shieldline troubleshooting and FAQ

Shieldline is Brightfield's VPN for Windows, macOS, iPhone, Android and supported
routers. Shieldline Pro includes 8 device slots, multi-hop and the ad blocker.

## Error codes

- **SL-17**: authentication failed. Sign out of the client and sign in again.
- **SL-42**: the exit server is full or in maintenance. Pick another server.
- **SL-58**: all device slots are in use. Remove an old device in your account.
- **SL-63**: the network blocks VPN traffic. Switch to WireGuard mode or port 443.

## I can't connect to a server

1. Try a different exit location.
2. Switch protocol between WireGuard mode and OpenVPN.
3. Check the status page for exit servers in maintenance.

## The kill switch blocks my internet

The kill switch cuts traffic whenever the tunnel drops. If you cannot reconnect,
turn the kill switch off, connect, then turn it back on.

## Split tunneling

Split tunneling lets chosen apps bypass the VPN. It is available on Windows,
Android and macOS 7.2 and later.

## Streaming through the tunnel

Some services block VPN exit addresses. Shieldline rotates streaming-optimised
servers, marked with a play icon in the server list.

## Multi-hop is slow

Multi-hop routes traffic through two exit servers; expect lower speeds.
""",
    "snapvault-troubleshooting.md": """\
# Snapvault troubleshooting and FAQ

Snapvault is Brightfield's photo cloud: camera roll backup, shared albums, face
grouping, memories and RAW storage. The free tier includes 15 GB.

## Error codes

- **SV-201**: upload paused because storage is full. Free up space or upgrade.
- **SV-310**: the file type is not supported. RAW files need Snapvault Plus.
- **SV-415**: a shared album link expired. Ask the owner to share it again.
- **SV-522**: the library download timed out. Download one album at a time.

## Camera roll backup is stuck

1. Open the app and keep it in the foreground until the queue starts.
2. Check that backup over mobile data is allowed if you are not on wifi.
3. Low power mode pauses background uploads on iPhone.

## Restoring deleted photos

Deleted photos stay in Recently deleted for 60 days. Photo restore brings them back
to their original albums. After 60 days they cannot be recovered.

## Shared albums

Anyone with the link can view a shared album. Invite family to an album to let them
add photos as well.

## Face grouping

Face grouping runs on your device and can be turned off under Settings > Privacy.

## Downloading my library

Use Settings > Export to download the whole library as zip files of up to 10 GB.
""",
    "billing-and-refunds.md": """\
# Billing and refunds policy

This policy covers all Brightfield products: Ledgerly, ThermaPilot, Trackwise,
Shieldline and Snapvault.

## When you are billed

Monthly plans renew on the same day each month. Annual plans renew once a year; we
email a reminder 7 days before the renewal. Invoices are available in the account
area of each product and can show a company name and VAT number.

## Taxes

Prices are shown without sales tax or VAT. The tax line on an invoice depends on
your billing address.

## Failed payments

If a payment fails we retry three times over 7 days. Paid features are paused after
the last failed retry until the payment card is updated.

## Duplicate or unexpected charges

If you see the same charge twice, or a charge much larger than usual, contact
billing support with the invoice number. Charges you did not authorise are handled
as fraud: freeze the card and contact us immediately.

## Refunds

- Any subscription can be refunded in full within 30 days of purchase.
- After 30 days refunds are at our discretion and are usually declined, except when
  the service was unavailable for an extended period.
- Charges made after a cancellation are always refunded.
- Refunds go back to the original payment method and take 5 to 10 business days.

## Cancelling

Cancel from the account settings of the product. You keep paid features until the
end of the current billing period.
""",
    "account-security-and-2fa.md": """\
# Account security and two-factor authentication

All Brightfield accounts support two-factor authentication (2FA) with an
authenticator app, SMS codes or Sign in with Apple.

## Turning on 2FA

Open account settings, choose Security > Two-factor authentication, and scan the QR
code with an authenticator app. Save the 10 backup codes somewhere safe.

## Lost phone or authenticator

Sign in with a backup code, then set up 2FA again on the new phone. Without backup
codes, contact support; we verify your identity before removing 2FA, which can take
up to 2 business days.

## Codes are rejected

Authenticator codes depend on the clock. Turn on automatic date and time on your
phone. SMS codes expire after 10 minutes.

## Password reset emails

Reset emails come from no-reply@brightfield.example. Check spam and wait 10 minutes
before requesting another one; each new request invalidates the previous link.

## Account lockouts

After 10 failed sign-in attempts the account is locked for 30 minutes. Support can
unlock it sooner after verifying your identity.

## If you think your account was taken over

Signs include sign-in alerts from unknown places, a changed email or password, or a
changed 2FA phone number. Contact support right away: suspected account takeover is
always handled as urgent, and we freeze the account while we investigate.
""",
    "sla-and-priorities.md": """\
# SLA and priority definitions

Every support ticket gets exactly one of four priorities: low, medium, high or
urgent. Priority is set by the impact of the problem, not by how the ticket is
written. A ticket in capital letters or marked "URGENT" by the customer is
prioritised by what actually happened.

## Urgent (first response within 1 hour, 24/7)

- Money lost: charges or payments the customer did not authorise, or charges that
  caused overdraft fees.
- Suspected account takeover: unknown sign-ins, changed email, password or 2FA phone.
- Data loss: photos, tasks, schedules or other data deleted or vanished.
- Outages that affect more than one person, such as a whole office, team or region.

## High (first response within 4 business hours)

- One customer fully blocked with no workaround: locked out on every device, or a
  bug that happens every time.
- Charged twice, a charge more than double the usual amount, or a failed payment
  that locked paid features.
- A refund that was promised and never arrived, or a charge after cancelling.
- An outage that seems limited to a single person or is intermittent.

## Medium (first response within 1 business day)

- A problem with a workaround, or access that still works on another device.
- Small billing discrepancies.
- Refund requests within the 30-day refund window.
- How-to questions with a stated deadline.

## Low (first response within 3 business days)

- Feature requests and suggestions.
- How-to questions without a deadline.
- Cosmetic bugs that do not block anything.
- Goodwill refund requests outside the 30-day window.

## Changing a priority

Agents may raise a priority when new information arrives, for example when more
people report the same outage.
""",
    "status-and-outages.md": """\
# Status page and outage procedures

The status page shows the health of every Brightfield service: Ledgerly transfers
and sign-in, ThermaPilot cloud control, Trackwise web and API, Shieldline exit
servers by region, and Snapvault uploads and sharing.

## Before reporting an outage

1. Check the status page for an active incident.
2. Try another network (wifi and mobile data) and another device.
3. Ask a colleague or family member whether it works for them.

## Reporting an outage

Tell us which product and feature is affected, since when, from which region, and
how many people are affected. Reports that more than one person is affected are
handled as urgent; a problem that seems limited to one person is handled as high.

## During an incident

- We post an update on the status page at least every 30 minutes.
- ThermaPilot thermostats keep following their schedules while cloud control is down.
- Shieldline clients with the kill switch on will block traffic until a server is
  reachable; pick another region to stay online.
- Snapvault queues uploads on the device and resumes automatically.

## After an incident

We publish a short post-incident report within 5 business days. Customers on paid
plans affected for more than 4 hours can ask for a pro-rated credit.

## Slow performance

Severe slowness (screens taking a minute to load) is treated the same as an outage.
""",
    "plans-and-pricing.md": """\
# Plans and pricing

Every product has a free tier and one paid plan. Prices are per month unless noted,
without tax.

## Ledgerly Plus: $4.99

Higher instant-transfer limits, unlimited savings pots and spending insights export.

## ThermaPilot Care: $2.99 or $29.99 per year

Energy reports, extended temperature history and priority hardware replacement.

## Trackwise Team: $8.00 per seat

Sprint planning, the Gantt timeline, task dependencies, time tracking and the Slack
integration. Annual billing is $96.00 per seat.

## Shieldline Pro: $9.99 or $59.99 per year

8 device slots, multi-hop, the ad blocker and split tunneling.

## Snapvault Plus: $2.99 (200 GB) or $9.99 (2 TB), $99.99 per year for 2 TB

RAW storage, unlimited shared albums and full-resolution backup of videos.

## Free tiers

- Ledgerly: instant transfers up to $500 a day, three savings pots.
- ThermaPilot: scheduling, geofencing and remote control.
- Trackwise: up to 3 users and 2 boards.
- Shieldline: one device, 5 exit locations.
- Snapvault: 15 GB of storage.

## Switching plans

Upgrades take effect immediately and are pro-rated. Downgrades take effect at the
next renewal.
""",
    "contacting-support.md": """\
# Contacting support

Brightfield support handles Ledgerly, ThermaPilot, Trackwise, Shieldline and
Snapvault from one help desk.

## How to reach us

Open the product, go to Help > Contact support, or write to the help desk from the
email address on your account. Phone support is available for urgent issues.

## What to include

- The product and, if you know it, the feature (for example shared albums, the
  kill switch or bill pay).
- What you expected and what happened instead, including any error code.
- Your app or firmware version and your device.
- Whether anyone else is affected.

Please do not send full card numbers, passwords or 2FA codes. We will never ask
for them.

## How tickets are handled

Each ticket is triaged into a category (billing, refund, bug, account access,
outage, feature request or how-to question), a priority and a product. See
"SLA and priority definitions" for response times.

## Feature requests

We read every suggestion and review the most requested features each quarter.
Feature requests do not get individual status updates.
""",
    "data-export-and-privacy.md": """\
# Data export and privacy

You can take your data with you from every Brightfield product.

## Exporting data

- **Ledgerly**: statements and transactions as PDF or CSV from Accounts > Statements.
- **ThermaPilot**: schedules and temperature history as CSV from Settings > Data.
- **Trackwise**: tasks, projects and boards as CSV or JSON from Workspace settings >
  Export. The Gantt timeline exports as PDF or PNG.
- **Shieldline**: we keep no connection logs, so there is no traffic history to
  export. Device slots and saved servers are listed in your account.
- **Snapvault**: the full photo and video library from Settings > Export.

## Using more than one device

All products can be used on several devices with one account. Shieldline limits the
number of devices by plan; the others do not.

## Privacy

We do not sell personal data. Face grouping in Snapvault runs on your device. Location
used by ThermaPilot geofencing stays on your phone.

## Deleting your account

Deleting an account removes your data within 30 days. Cancel paid plans first so that
you are not charged again.
""",
}


def generate(out_dir: Path) -> list[Path]:
    """Write tickets.jsonl and docs/*.md under ``out_dir``; return the written paths (sorted)."""
    out_dir = Path(out_dir)
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    rows = make_rows(rng)
    written = [out_dir / "tickets.jsonl"]
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    written[0].write_bytes(data.encode("utf-8"))
    for name in sorted(DOCS):
        path = out_dir / "docs" / name
        path.write_bytes(DOCS[name].encode("utf-8"))
        written.append(path)
    return sorted(written)


def check(out_dir: Path) -> list[str]:
    """Relative paths that differ between a fresh generation and ``out_dir`` (missing or extra included)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in generate(Path(tmp))}
    committed = {"tickets.jsonl"} | {f"docs/{p.name}" for p in (out_dir / "docs").glob("*.md")}
    bad = [rel for rel in sorted(committed - fresh.keys())]
    for rel, data in sorted(fresh.items()):
        path = out_dir / rel
        if not path.is_file() or path.read_bytes() != data:
            bad.append(rel)
    return sorted(bad)


def _summary(path: Path) -> str:
    labels = [json.loads(json.loads(line)["output"]) for line in path.read_text("utf-8").splitlines()]
    lines = [f"{len(labels)} rows"]
    for key in ("category", "priority", "product"):
        counts = Counter(label[key] for label in labels)
        parts = ", ".join(f"{k}={v} ({v / len(labels):.1%})" for k, v in counts.most_common())
        lines.append(f"{key}: {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--check", action="store_true", help="compare a fresh generation with --out")
    args = parser.parse_args(argv)
    if args.check:
        bad = check(args.out)
        for rel in bad:
            print(f"differs: {rel}")
        if not bad:
            print(f"{args.out} is up to date")
        return 1 if bad else 0
    paths = generate(args.out)
    print(f"wrote {len(paths)} files to {args.out}")
    print(_summary(args.out / "tickets.jsonl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
