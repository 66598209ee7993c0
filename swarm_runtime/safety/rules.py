"""The preflight rules: one row per kind of harm, each judging intent rather than vocabulary.

A path or a secret's name in a prompt is not an attack: developers explain `/etc/hosts`,
load settings from `.env` and compare `id_rsa` with `id_ed25519` every day, and a model
cannot open a file it is only told about. What is an attack is the act: reading a secret
*and sending it somewhere*, piping a download into a shell, running a downloaded script,
opening a reverse shell, overriding the instructions, or forging a chat turn. Local
commands are held by the local-command policy, which is the real boundary; these rules
are a tripwire in front of it.

Patterns see folded text (see `folding.fold`), so they are written in lower case. Each
starts with a literal, which keeps a 4 KB text well under a millisecond, every gap is
bounded or stops where the next attempt would start, and no two unbounded runs that follow
each other may trade characters (hence the possessive `*+`), so a pattern's cost grows
linearly with the text. A reason may show the matched text as {match}.
"""

from __future__ import annotations

import re

CHECKS = ("constitutional", "workspace", "network", "prompt_injection")


def _gap(words: int) -> str:
    """Separators with up to `words` other words in between: "send all of the old secrets to".
    The gap stays inside one sentence, so a verb never reaches an object two sentences on."""
    return rf"(?:[^\w.!?\n]++\w++){{0,{words}}}?[^\w.!?\n]++"


def _any(*alternatives: str) -> str:
    return "(?:" + "|".join(alternatives) + ")"


def _lead(word: str) -> str:
    """`word` where a word starts. The boundary is checked behind the word rather than in
    front, so the pattern still begins with a literal the regex engine can jump to."""
    literal = re.escape(word)
    return rf"{literal}(?<![\w-]{literal})"


def _each(words: tuple[str, ...], rest: str) -> tuple[str, ...]:
    """One pattern per leading word: literal-led patterns scan far faster than one alternation."""
    return tuple(_lead(word) + rest for word in words)


_DOWNLOADERS = ("curl", "wget", "fetch", "iwr", "irm", "invoke-webrequest", "invoke-restmethod")
_DOWNLOADER = _any(*_DOWNLOADERS)
_INTERPRETER = (
    r"(?:sh|bash|zsh|dash|ksh|ash|fish|python[23]?(?:\.\d+)?|perl|ruby|node|php|pwsh|powershell"
    r"|lua|tclsh|osascript|iex|invoke-expression|source)"
)
# What may stand between a pipe and the interpreter: sudo, a directory, `env` with its
# options and assignments, busybox, or another launcher, in any number up to three.
_LAUNCHER = (
    r"(?:(?:sudo|doas)\s++(?:-\S++\s++(?:\w++\s++)?){0,4}"
    r"|/?(?:[\w.-]++/)*+(?:env|busybox|toybox|command|exec|nohup|nice|stdbuf|xargs)"
    r"\s++(?:(?:-\S*+|\w++=\S*+)\s++){0,4})"
)
_RUN_INTERPRETER = rf"(?:{_LAUNCHER}){{0,3}}/?(?:[\w.-]++/)*+{_INTERPRETER}\b"
_SUBSTITUTED_DOWNLOAD = rf"\s*+(?:[\"']\s*+)?(?:\$\(|`)\s*+(?:sudo\s++)?{_DOWNLOADER}\b"
_SCRIPT = r"[\w-]++(?:\.[\w-]++)??\.(?:sh|bash|py|pl|rb|js|ps1|bat|cmd|exe|bin|run|elf|apk|jar)\b"
# A secret named in words: a bare "token" is a tokenizer's, "github token" is a credential.
_SECRET_WORDS = (
    r"(?:secrets?|credentials?|passwords?|passwd|passphrases?|private[\W_]*+keys?"
    r"|seed[\W_]*+phrases?|session[\W_]*+cookies?|cookies"
    r"|(?:api|access|auth|secret|ssh|gpg|pgp|session|bearer|aws|gcp|azure|signing|deploy|refresh"
    r"|oauth|jwt|client|personal[\W_]*+access|github|gh|gitlab|slack|stripe|openai|anthropic"
    r"|npm|pypi|docker|dockerhub|heroku|twilio|sendgrid|discord|telegram|vault|root|admin"
    r"|database|db|wallet|cloudflare|digitalocean|huggingface|hf)"
    r"[\W_]*+(?:(?:bot|app|user|service|account|admin|access|secret|private|personal|signing"
    r"|master|root|prod|production)[\W_]*+)?(?:keys?|tokens?|secrets?|passwords?|credentials?"
    r"|pats?))"
    # A password reset link or a key rotation policy is not a secret.
    r"(?![\W_]*+(?:reset|recovery|change|hash|hashing|field|form|input|strength|policy|manager"
    r"|prompt|rotation|expiry|validation|length|requirement|format|flow|endpoint|header))"
)
# Files that hold secrets, in four forms each led by a literal (the dot files share one
# scan of the text): `.env` but not `.env.example`, `id_rsa` but not `id_rsa.pub`, nor
# `process.env`.
_SECRET_FILE_FORMS = (
    r"/etc/(?:passwd|shadow|gshadow|sudoers|master\.passwd)\b",
    r"\.(?:ssh(?<![\w.-]\.ssh)/+[\w.-]*+|aws/+credentials\b|docker/+config\.json|kube/+config\b"
    r"|(?:netrc|git-credentials|pgpass|npmrc|pypirc|bash_history)\b"
    r"|env(?<![\w.-]\.env)(?!\.(?:example|sample|template|dist)\b)(?:\.[\w-]++)?(?![\w-]))",
    r"id_(?<!\wid_)(?:rsa|dsa|ecdsa|ed25519)\b(?!\.pub)",
    r"wallet\.dat\b",
)
_SECRET_FILES = _any(*_SECRET_FILE_FORMS)
_LOCAL_PATH = r"(?:~|\$home|\.)?(?:/[\w.-]++)*?/?"
# Somewhere outside: an address, a host, or words that name the sender's own place. A URL
# of this machine, or one that ends in a login, auth or token endpoint, is where a
# credential is meant to go, and is not outside.
_OUTSIDE = (
    r"(?:(?:https?|ftps?|wss?)://(?!localhost\b|127\.|[\w.-]++(?::\d++)?/(?:[\w.-]++/)*?"
    r"(?:login|log-in|signin|sign-in|auth\w*+|token|oauth\w*+|sessions?)(?![\w.-]*+/))"
    r"|s3://|gs://|\d{1,3}(?:\.\d{1,3}){3}"
    r"|[\w.+-]++@[\w-]++\.|(?:[\w-]++\.)++(?:com|net|org|io|ru|cn|xyz|top|info|biz"
    r"|me|co|dev|app|sh|site|online|example|tk|cc|su|pw|link|click|ly|gg|in|de|uk|us|onion)\b"
    r"|(?:me|us|my(?!\W++(?:clipboard|local|own|\.env|config))|myself|attacker\w*+|external"
    r"|remote|outside|third[\W_]*+party|personal|public|pastebin|hastebin|webhooks?|discord"
    r"|telegram|ngrok|requestbin|gist|anyone)\b)"
)
_TO_OUTSIDE = rf"(?:to|into|onto)\W++(?:(?:the|a|an|this|that|some|our)\W++)?{_OUTSIDE}"
_SEND_VERBS = (
    "upload", "send", "sent", "post", "transmit", "forward", "leak", "email", "e-mail", "mail",
    "exfiltrate", "scp", "publish", "beam", "smuggle", "pipe",
)  # fmt: skip
_SEND_VERB = _any(*_SEND_VERBS)
_NET_TOOLS = r"(?:nc|ncat|netcat|socat|telnet|curl|wget|mail|sendmail|mutt|scp|rsync|ftp|sftp)"
_LOCAL_HOST = r"(?:localhost|127\.|0\.0\.0\.0|::1|\[::1\])"
# A host name or an address that is not this machine; a bare port (`nc -l 9000`) is not one.
_REMOTE_HOST = rf"(?!{_LOCAL_HOST})(?:[a-z][\w-]*+|\d{{1,3}}\.\d)"
_HOSTS = r"(?:hosts?|servers?|machines?|nodes?|computers?|devices?|systems?|networks?)"
_C2 = r"(?:c2|c&c|cnc|command(?:[\W_]*+(?:and|n)|(?=[\W_]*&))[\W_]*+control)"
_EARLIER = r"(?:previous|previously|prior|above|earlier|preceding|foregoing|original|initial)"
_DIRECTIONS = (
    r"(?:instructions?|rules|prompts?|directions?|directives?|guidelines|commands|messages?"
    r"|context|constraints|guidance|programming|text)"
)
_OVERRIDE_TAIL = _any(
    rf"\b{_gap(14)}{_EARLIER}\b{_gap(2)}(?<!commit\W)(?<!error\W)(?<!log\W){_DIRECTIONS}\b",
    rf"\b{_gap(4)}{_DIRECTIONS}\W++(?:above|before|so\W+far|you\W+(?:were|have\W+been)\W+given)\b",
    r"\W+(?:everything|anything|all(?:\W+of)?(?:\W+the)?)\W+"
    r"(?:(?:that\W+was|you\W+(?:were|have\W+been)|i)\W+)?"
    r"(?:above|before|prior|previously|earlier|so\W+far|said|told)\b",
    r"\W+(?:all\W+)?(?:of\W+)?your\W+(?:\w+\W+)?(?:instructions|rules|guidelines|training"
    r"|programming|system\W+prompt|constraints|restrictions|safety)\b",
)
_UNRESTRICTED = (
    r"(?:dan|jailbroken|unrestricted|unfiltered|uncensored|unbound|evil"
    r"|(?:developer|dev|god|admin|sudo|jailbreak)\W+mode)\b"
)
_ROLE = r"(?:system|user|assistant|developer|tool)"

# Rules whose phrase, quoted whole ("flag inputs like 'ignore previous instructions'"), is
# named rather than said.
QUOTED_IS_MENTION = frozenset({"prompt_injection.instruction_override"})
QUOTES = "'\"`\u2018\u2019\u201c\u201d"

# (rule id, check, patterns, reason). A rule matches when any of its patterns does.
RULE_TABLE: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (
        "constitutional.data_exfiltration",
        "constitutional",
        (
            # Described, not asked for: "malware that exfiltrates data over DNS".
            _lead("exfiltrat")
            + "".join(
                f"(?<!{word} exfiltrat)"
                for word in ("that", "which", "who", "malware", "attackers", "can")
            )
            + r"(?:e|es|ing)\b"
            + _gap(14)
            + r"(?:to|into|onto|via|over|through|out)\b",
        ),
        "data exfiltration to an external destination",
    ),
    (
        "constitutional.secrets_sent_out",
        "constitutional",
        (
            *_each(_SEND_VERBS, rf"\w*+{_gap(14)}{_SECRET_WORDS}{_gap(8)}{_TO_OUTSIDE}"),
            # The secret first: "take the stripe key and send it over to attacker@...".
            *_each(
                ("token", "key", "password", "passwd", "secret", "credential", "cookie"),
                rf"s?\b{_gap(10)}{_SEND_VERB}\w*+\W++(?:it|them|this|that|these|those)\b"
                rf"{_gap(1)}{_TO_OUTSIDE}",
            ),
        ),
        "sending secrets or credentials elsewhere",
    ),
    (
        "constitutional.self_replication",
        "constitutional",
        (
            _lead("self") + r"[\W_]*replicat(?:e|es|ed)\b",
            *_each(
                ("copy", "copies", "clone", "replicate", "propagate", "install", "spread"),
                rf"\w*\W+(?:yourself|itself)\b{_gap(12)}{_HOSTS}\b",
            ),
            _lead("spread") + r"\w*\W+(?:to|across|into|onto)\W+(?:other|every|neighbou?ring)"
            rf"\W+(?:\w+\W+)?{_HOSTS}\b",
        ),
        "self-replication",
    ),
    (
        "constitutional.phone_home",
        "constitutional",
        (
            _lead("phone") + r"[\W_]*home\b",
            *_each(
                ("beacon", "callback", "call back", "connect back", "check in", "report back"),
                rf"\w*{_gap(6)}{_C2}\b",
            ),
        ),
        "phone-home or command-and-control beacon",
    ),
    (
        "workspace.secret_file_sent_out",
        "workspace",
        # A secret file, then within the same line a send to somewhere outside or a pipe into
        # a network tool; a send naming the file; or a network tool carrying it as payload.
        (
            *(
                rf"{form}[^\n]{{0,160}}?(?:\|\s*+(?:sudo\s++)?{_NET_TOOLS}\b"
                rf"|>\s*+/dev/(?:tcp|udp)/|\b{_SEND_VERB}\w*+{_gap(4)}{_TO_OUTSIDE})"
                for form in _SECRET_FILE_FORMS
            ),
            *_each(
                ("curl", "wget"),
                rf"\b(?:(?!\b{_NET_TOOLS}\b)[^\n|;&]){{0,120}}?"
                r"(?:[@<]|(?:-t|--upload-file|--post-file|--data(?:-binary|-raw)?|-d|-f|--form)"
                r"[\s=]++[\"']?(?:\w++=)?@?)\s*+" + _LOCAL_PATH + _SECRET_FILES,
            ),
            # The act first: "upload ~/.aws/credentials to https://...".
            *_each(
                ("upload", "send", "post", "email", "mail", "forward", "leak", "transmit"),
                r"\w*+(?:[^\w.!?\n]++\w++){0,8}?[^\w.!?\n]*?"
                rf"{_LOCAL_PATH}{_SECRET_FILES}{_gap(4)}{_TO_OUTSIDE}",
            ),
            *_each(("dig", "nslookup"), rf"\b[^\n]{{0,40}}?\$\([^\n)]{{0,80}}?{_SECRET_FILES}"),
            *_each(
                ("scp", "rsync", "sftp", "nc", "ncat", "netcat", "socat", "mail", "sendmail"),
                rf"\b(?:(?!\b{_NET_TOOLS}\b)[^\n|;&]){{0,120}}?(?:\s|<)\s*+[\"']?"
                + _LOCAL_PATH
                + _SECRET_FILES,
            ),
        ),
        "secret file '{match}' sent out of the workspace",
    ),
    (
        "network.download_piped_to_shell",
        "network",
        # A downloader with an argument: "explain the curl | bash pattern" names it. The scan
        # stops where the next downloader's own attempt starts, so each character is read by
        # one attempt. A backslash-newline continues the command line.
        _each(
            _DOWNLOADERS,
            rf"(?:[ \t]|\\\n)++[^\s|](?:(?!\b{_DOWNLOADER}[ \t])(?:\\\n|[^\n]))*?"
            rf"(?<!\|)\|(?!\|)\s*+{_RUN_INTERPRETER}(?!\s+-m\s+json\.tool\b)",
        ),
        "download piped into a shell or interpreter",
    ),
    (
        "network.download_substituted_into_shell",
        "network",
        (
            rf"<\(\s*+(?:sudo\s++)?{_DOWNLOADER}\b",
            r"-c" + _SUBSTITUTED_DOWNLOAD,
            _lead("eval") + _SUBSTITUTED_DOWNLOAD,
            *_each(
                ("exec", "eval"),
                r"\(\s*+[\w.]{0,40}?(?:urlopen|requests\.get|httpx\.get|urllib\w*+\.request)",
            ),
            *_each(
                ("iex", "invoke-expression"),
                rf"\s*+(?:\(\s*+){{0,2}}"
                rf"(?:{_DOWNLOADER}\b|new-object\s++(?:system\.)?net\.webclient)",
            ),
        ),
        "download executed by a shell or interpreter",
    ),
    (
        "network.download_then_run",
        "network",
        # Two steps: a script fetched to a file, then the same file run (or made executable)
        # within the next few lines.
        (
            *_each(
                ("curl", "wget", "fetch", "iwr", "invoke-webrequest"),
                rf"\b(?:(?!\b{_DOWNLOADER}\b)[^\n])*?"
                r"(?:(?:-o|-outfile|--output(?:-document)?)[\s=]*+(?:[^\s/]*+/)*+(\w[\w.-]*+)"
                rf"|://(?:[^\s/]++/)++({_SCRIPT}))"
                # The window steps a word at a time, so only a word's start is tried.
                r"(?:\S*+\s++){0,40}?[`'\"(;&|]*+"
                rf"(?:(?:sudo\s++)?(?:{_INTERPRETER}|chmod\s++\S*+)\s++(?:-\S++\s++)*+|\.?/)"
                r"(?:[^\s/]*+/)*+(?:\1|\2)\b",
            ),
            _lead("download") + rf"\w*+\W[^\n]{{0,80}}?https?://\S{{0,120}}?{_SCRIPT}"
            rf"[^\n]{{0,120}}?\b(?:run|execute|exec|launch|start|source)\w*+"
            r"\W++(?:it|this|that|the\W++(?:script|file|binary|payload|installer))\b",
        ),
        "downloaded script run in a second step",
    ),
    (
        "network.reverse_shell",
        "network",
        (
            r"/dev/(?:tcp|udp)/",
            *_each(("nc", "ncat", "netcat"), r"\b(?:\s++\S++){0,6}?\s++-[ec]\b"),
            _lead("socat") + r"\b[^\n]{0,80}?\b(?:exec|system):",
            _lead("mkfifo") + r"\b[^\n]{0,80}?\b(?:nc|ncat|netcat|telnet)\b",
        ),
        "reverse shell",
    ),
    (
        "network.netcat_transfer",
        "network",
        # Data fed into netcat leaves the machine; a local port test does not.
        (
            r"\|\s*+(?:sudo\s++)?(?:nc|ncat|netcat|telnet)\s++(?:-\S++\s++(?:\d++\s++)?)*+"
            + _REMOTE_HOST,
            rf"\|\s*+(?:sudo\s++)?socat\b[^\n|]{{0,40}}?\btcp[46]?(?:-connect)?:{_REMOTE_HOST}",
            *_each(
                ("nc", "ncat", "netcat"),
                rf"\s++(?:-\S++\s++(?:\d++\s++)?)*+{_REMOTE_HOST}[\w.-]*+\s++\d++"
                r"[^\n|;&<]{0,40}<(?!<)",
            ),
            *_each(
                ("into", "to", "through"),
                r"\W++(?:nc|ncat|netcat|socat|telnet)\s++(?:-\S++\s++(?:\d++\s++)?)*+"
                rf"{_REMOTE_HOST}[\w.-]*+[\s:]++\d",
            ),
        ),
        "data sent out with netcat",
    ),
    (
        "prompt_injection.instruction_override",
        "prompt_injection",
        (
            *_each(
                ("ignore", "disregard", "forget", "discard", "overlook", "bypass", "skip"),
                _OVERRIDE_TAIL,
            ),
            _lead("forget") + r"\W+everything\b",
            _lead("override") + r"\W+(?:(?:your|the|all|any|of|my|these|those|its|existing)\W+)"
            r"{0,3}(?:safety|constraints|rules|guardrails|restrictions|instructions|guidelines"
            r"|programming|safeguards|system\W+prompt)\b",
            _lead("you") + r"\W+are\W+now\W+(?:(?:a|an|in)\W+)?" + _UNRESTRICTED,
            _lead("now") + r"\W+you\W+are\W+(?:(?:a|an|in)\W+)?" + _UNRESTRICTED,
            _lead("act") + r"\W+as\W+(?:(?:a|an)\W+)?" + _UNRESTRICTED,
            _lead("pretend") + r"\W+(?:that\W+)?you\W+(?:are|have)\W+(?:(?:a|an|in)\W+)?"
            r"(?:no\W+(?:rules|restrictions|limits|guidelines|filters)|" + _UNRESTRICTED + ")",
            _lead("do") + r"\W+anything\W+now\b",
            *_each(
                ("reveal", "print", "show", "repeat", "output", "leak", "dump"),
                # Yours, or the hidden one: "print the system prompt template" is a file.
                r"\W+(?:me\W+)?(?:your\W+(?:full\W+|hidden\W+|initial\W+|original\W+){0,2}"
                r"(?:system\W+prompt|instructions)|the\W+(?:hidden|initial|original|secret)\W+"
                r"(?:system\W+prompt|instructions))\b",
            ),
        ),
        "instruction override phrase",
    ),
    (
        "prompt_injection.role_tag",
        "prompt_injection",
        # A chat-format tag used as structure, not quoted or named: a turn that opens with a
        # role, a tag at the start of a line, or a pair of tags around an instruction.
        (
            rf"<\|im_start\|>(?<![`'\"]<\|im_start\|>)(?=[ \t]*+{_ROLE}[ \t]*+(?:\n|:|$))",
            rf"<\|start_header_id\|>(?<![`'\"]<\|start_header_id\|>)[ \t]*+{_ROLE}"
            r"[ \t]*+<\|end_header_id\|>",
            r"<(?<![^\n]<)/?[ \t]*+(?:system|sys)[ \t]*+>",
            r"<<(?<![^\n]<<)/?sys>>",
            r"\[inst\](?<![`'\"]\[inst\])[ \t]*+[a-z][^\s\[\]{}<>`]*+(?:[ \t]++[^\s\[\]{}<>`]++)++"
            r"[ \t]*+\[/inst\]",
            r"###(?<![^\n]###)#*+[ \t]*+(?:system|instruction)[ \t]*+:[ \t]*+\n?[ \t]*+[a-z]",
        ),
        "role tag `{match}`",
    ),
)
