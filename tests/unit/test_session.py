"""Unit tests of the SMTP state machine on in-memory streams (no sockets)."""

from __future__ import annotations

import io
import re
import types
from typing import List, Optional, Sequence

import pytest

from msmtpd.net.connection import ShutdownRequested, in_memory
from msmtpd.policy.passwords import FAILURE_DELAY, FailureClock, PasswordCheck
from msmtpd.smtp import replies
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session import (
    MAX_AUTH_FAILURES,
    MAX_COMMAND_LINE,
    MAX_CONSECUTIVE_ERRORS,
    MAX_HELO_IN_HEADER,
    MAX_RECIPIENT_OVERSHOOT,
    MAX_RECIPIENTS,
    Session,
    Settings,
    sanitise_helo,
)
from tests.helpers import auth_plain, b64
from tests.support.session_script import (
    HOST,
    FakeDeliver,
    Recv,
    Result,
    lines,
    parse_replies,
    talk,
    transaction,
)

# -- helpers ---------------------------------------------------------------










def scripted(*chunks: bytes, end: Optional[BaseException] = None) -> Recv:
    """A recv giving ``chunks`` one by one, then raising ``end`` (or EOF)."""
    queue = list(chunks)

    def recv(size: int) -> bytes:
        if queue:
            return queue.pop(0)
        if end is not None:
            raise end
        return b""

    return recv






def body_of(data: bytes) -> bytes:
    """The mail without the Received: header the session puts first."""
    assert data.startswith(b"Received: "), data[:80]
    head, rest = data.split(b"\n", 1)
    while rest.startswith(b"\t"):
        rest = rest.split(b"\n", 1)[1]
    return rest


TRANSACTION = ("EHLO client.test", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>", "DATA")




# -- greeting, EHLO, HELO ---------------------------------------------------


def test_greeting_names_the_host() -> None:
    """The first reply is the 220 greeting with the configured host name."""
    result = talk(lines("QUIT"))
    assert result.replies[0] == replies.GREETING.format(host=HOST)
    assert result.raw.startswith(f"220 {HOST} ESMTP msmtpd\r\n".encode())


def test_ehlo_lists_the_extensions() -> None:
    """EHLO offers PIPELINING, 8BITMIME, SMTPUTF8, SIZE, ENHANCEDSTATUSCODES and no AUTH."""
    result = talk(lines("EHLO client.test", "QUIT"))
    ehlo = result.replies[1]
    assert ehlo.code == 250
    offered = ehlo.text.split("\n")
    assert offered[0] == HOST
    for keyword in ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "ENHANCEDSTATUSCODES"):
        assert keyword in offered
    assert not any(k.startswith("AUTH") for k in offered)
    assert result.raw.count(b"250-") == len(offered) - 1


def test_ehlo_size_shows_the_limit() -> None:
    """With a size limit, EHLO announces it as ``SIZE n``."""
    result = talk(lines("EHLO client.test", "QUIT"), Settings(hostname=HOST, max_size=12345))
    assert "SIZE 12345" in result.replies[1].text.split("\n")


def test_ehlo_offers_auth_when_configured() -> None:
    """AUTH PLAIN LOGIN is offered only when authentication is configured."""
    result = talk(lines("EHLO client.test", "QUIT"), auth_settings())
    assert "AUTH PLAIN LOGIN" in result.replies[1].text.split("\n")


def test_helo_is_answered_with_the_host_name() -> None:
    """HELO gets a plain 250 with the host name and allows a transaction."""
    result = talk(lines("HELO client.test", *transaction(), "QUIT"))
    assert result.replies[1] == replies.HELO_OK.format(host=HOST)
    assert result.codes == [220, 250, 250, 250, 354, 250, 221]
    assert b" with SMTP;" in result.mails[0].data


@pytest.mark.parametrize("command", ["EHLO", "HELO", "EHLO   "])
def test_greeting_without_a_name_is_a_syntax_error(command: str) -> None:
    """EHLO and HELO need a name (501)."""
    result = talk(lines(command, "QUIT"))
    assert result.codes == [220, 501, 221]


# -- a whole transaction ---------------------------------------------------


def test_a_transaction_is_delivered() -> None:
    """MAIL, RCPT, DATA hand the envelope and the LF message to deliver."""
    result = talk(lines("EHLO client.test", *transaction(), "QUIT"))
    assert result.codes == [220, 250, 250, 250, 354, 250, 221]
    assert result.replies[5] == replies.DELIVERED
    assert result.quit is True
    [mail] = result.mails
    assert mail.sender == "alice@example.org"
    assert mail.recipients == ["bob@example.net"]
    assert body_of(mail.data) == b"Subject: hi\n\nhello\n"


def test_commands_are_case_insensitive_and_allow_a_space_after_the_colon() -> None:
    """``mail from: <a@b>`` is understood like ``MAIL FROM:<a@b>``."""
    result = talk(lines("ehlo client.test", "mail from: <a@example.org>", "rcpt to: <b@example.org>",
                        "data", "x\r\n.", "quit"))
    assert result.codes == [220, 250, 250, 250, 354, 250, 221]
    assert result.mails[0].recipients == ["b@example.org"]


def test_bare_lf_command_lines_are_accepted() -> None:
    """Commands ending in a bare LF are understood."""
    result = talk(b"EHLO client.test\nNOOP\nQUIT\n")
    assert result.codes == [220, 250, 250, 221]


def test_quit_ends_the_session_with_221_and_true() -> None:
    """QUIT is answered 221 and run() returns True; later input is ignored."""
    result = talk(lines("QUIT", "NOOP"))
    assert result.replies[-1] == replies.BYE.format(host=HOST)
    assert result.codes == [220, 221]
    assert result.quit is True


def test_end_of_input_without_quit_returns_false() -> None:
    """A client that just goes away ends the session with run() False."""
    result = talk(lines("EHLO client.test"))
    assert result.codes == [220, 250]
    assert result.quit is False


# -- MAIL parameters -------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("BODY=7BIT", replies.SENDER_OK),
        ("BODY=8BITMIME", replies.SENDER_OK),
        ("body=8bitmime", replies.SENDER_OK),
        ("BODY=BINARYMIME", replies.BINARYMIME_REFUSED),
        ("BODY=binarymime", replies.BINARYMIME_REFUSED),
        ("SIZE=1000", replies.SENDER_OK),
        ("SIZE=abc", replies.BAD_SIZE),
        ("SIZE=", replies.BAD_SIZE),
        ("SMTPUTF8", replies.SENDER_OK),
        ("SMTPUTF8 BODY=8BITMIME SIZE=10", replies.SENDER_OK),
        ("FOO=bar", replies.UNKNOWN_PARAMETER.format(name="FOO")),
        ("RET=HDRS", replies.UNKNOWN_PARAMETER.format(name="RET")),
        ("SMTPUTF8=yes", replies.UNKNOWN_PARAMETER.format(name="SMTPUTF8")),
    ],
)
def test_mail_parameters(params: str, expected: Reply) -> None:
    """BODY, SIZE and SMTPUTF8 are understood; anything else is 555."""
    result = talk(lines("EHLO client.test", f"MAIL FROM:<a@example.org> {params}", "QUIT"))
    assert result.replies[2] == expected


@pytest.mark.parametrize(("declared", "code"), [(999, 250), (1000, 250), (1001, 552)])
def test_mail_size_over_the_limit_is_552(declared: int, code: int) -> None:
    """A declared SIZE over --max-size is refused with 552 up front."""
    settings = Settings(hostname=HOST, max_size=1000)
    result = talk(lines("EHLO client.test", f"MAIL FROM:<a@example.org> SIZE={declared}", "QUIT"), settings)
    assert result.replies[2].code == code
    if code == 552:
        assert result.replies[2] == replies.MESSAGE_TOO_BIG.format(limit=1000)


@pytest.mark.parametrize(("max_size", "code"), [(1000, 552), (0, 250)])
def test_a_size_of_thousands_of_digits_is_answered(max_size: int, code: int) -> None:
    """A SIZE as long as a command line may be is just a big number."""
    settings = Settings(hostname=HOST, max_size=max_size)
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org> SIZE=" + "9" * 4000, "QUIT"), settings)
    assert result.codes == [220, 250, code, 221]


def test_rcpt_parameters_are_refused() -> None:
    """RCPT TO takes no parameters here: 555, and the recipient is not added."""
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>",
                        "RCPT TO:<b@example.org> NOTIFY=NEVER", "DATA", "QUIT"))
    assert result.replies[3] == replies.UNKNOWN_PARAMETER.format(name="NOTIFY")
    assert result.replies[4] == replies.NEED_RCPT


def test_message_over_the_limit_is_refused_after_the_dot() -> None:
    """A message bigger than --max-size gets 552 after its final dot, is not
    delivered, and the session goes on."""
    settings = Settings(hostname=HOST, max_size=1000)
    big = "x" * 2000 + "\r\n"
    result = talk(lines("EHLO client.test", *transaction(body=big), *transaction(), "QUIT"), settings)
    assert result.replies[5] == replies.MESSAGE_TOO_BIG.format(limit=1000)
    assert result.codes[6:] == [250, 250, 354, 250, 221]
    assert len(result.mails) == 1
    assert body_of(result.mails[0].data) == b"Subject: hi\n\nhello\n"


def test_size_limit_applies_to_the_clients_message_not_the_trace_header() -> None:
    """A message declared and sent within --max-size is accepted: the
    server's own Received: header must not push it over the limit."""
    settings = Settings(hostname=HOST, max_size=200)
    body = "Subject: s\r\n\r\n" + "y" * 120 + "\r\n"  # 138 octets on the wire
    result = talk(lines("EHLO client.test", *transaction(body=body, mail_params="SIZE=138"), "QUIT"),
                  settings)
    assert result.replies[5] == replies.DELIVERED
    assert len(result.mails) == 1


# -- recipients ------------------------------------------------------------


def test_a_thousand_recipients_and_then_452() -> None:
    """MAX_RECIPIENTS recipients are accepted; one more gets 452; the mail goes to the first ones."""
    assert MAX_RECIPIENTS >= 1000
    rcpts = [f"RCPT TO:<r{i}@example.org>" for i in range(MAX_RECIPIENTS + 1)]
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", *rcpts, "DATA", "x\r\n.", "QUIT"))
    answers = result.replies[3:3 + MAX_RECIPIENTS + 1]
    assert answers[:-1] == [replies.RECIPIENT_OK] * MAX_RECIPIENTS
    assert answers[-1] == replies.TOO_MANY_RECIPIENTS
    assert result.codes[-3:] == [354, 250, 221]
    assert result.mails[0].recipients == [f"r{i}@example.org" for i in range(MAX_RECIPIENTS)]


def test_recipients_past_the_limit_do_not_end_the_transaction() -> None:
    """1100 pipelined RCPTs: 100 get 452, which are not the client's errors
    (Postfix's smtpd_recipient_overshoot_limit): no 421, and DATA goes to
    the 1000 accepted."""
    rcpts = [f"RCPT TO:<r{i}@example.org>" for i in range(MAX_RECIPIENTS + 100)]
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", *rcpts, "DATA", "x\r\n.", "QUIT"))
    assert 421 not in result.codes
    assert result.codes.count(452) == 100
    assert result.codes[-3:] == [354, 250, 221]
    assert len(result.mails[0].recipients) == MAX_RECIPIENTS


def test_an_endless_overshoot_counts_as_errors_in_the_end() -> None:
    """Past the overshoot allowance the 452s count again, so a flood of
    RCPTs ends with the error bound like any other stream of mistakes."""
    rcpts = [f"RCPT TO:<r{i}@example.org>" for i in
             range(MAX_RECIPIENTS + MAX_RECIPIENT_OVERSHOOT + MAX_CONSECUTIVE_ERRORS + 5)]
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", *rcpts, "QUIT"))
    assert result.codes[-1] == 421 and result.mails == []


@pytest.mark.parametrize("address", ['<"$(id)"@example.org>', "<a`id`@example.org>", '<"a;b"@example.org>',
                                     '<"a b"@example.org>', "<a|b@example.org>", "<a&b@example.org>",
                                     "<a*@example.org>", "<a'b@example.org>", "<{a}@example.org>",
                                     "<a!b@example.org>", "<#a@example.org>", "<~a@example.org>"])
def test_shell_safe_addresses_refuse_shell_syntax(address: str) -> None:
    settings = Settings(hostname=HOST, shell_safe=True)
    result = talk(lines("EHLO client.test", f"MAIL FROM:{address}", "MAIL FROM:<ok@example.org>",
                        f"RCPT TO:{address}", "QUIT"), settings)
    assert result.codes == [220, 250, 553, 250, 553, 221]
    assert result.replies[2].text.startswith("5.1.3 Address refused: character ")


@pytest.mark.parametrize("address", ["<bounce+user=example.org@lists.example.net>", "<a.b-c_d/e@example.org>",
                                     "<jörg@exämple.org> SMTPUTF8", "<>"])
def test_shell_safe_addresses_let_letters_digits_and_verp_pass(address: str) -> None:
    settings = Settings(hostname=HOST, shell_safe=True)
    result = talk(lines("EHLO client.test", f"MAIL FROM:{address}", "QUIT"), settings)
    assert result.codes == [220, 250, 250, 221]


def test_without_shell_safe_addresses_shell_syntax_is_a_literal_address() -> None:
    result = talk(lines("EHLO client.test", *transaction(recipients=['<"$(touch${IFS}/tmp/x)"@x>']), "QUIT"))
    assert result.mails[0].recipients == ['"$(touch${IFS}/tmp/x)"@x']


def test_recipients_are_kept_in_order() -> None:
    """Recipients reach deliver in the order they were given."""
    rcpts = ["<c@example.org>", "<a@example.org>", "<b@example.org>"]
    result = talk(lines("EHLO client.test", *transaction(recipients=rcpts), "QUIT"))
    assert result.mails[0].recipients == ["c@example.org", "a@example.org", "b@example.org"]


# -- housekeeping verbs ----------------------------------------------------


@pytest.mark.parametrize("verb", ["RSET", "NOOP"])
@pytest.mark.parametrize(
    "before",
    [
        (),
        ("EHLO client.test",),
        ("EHLO client.test", "MAIL FROM:<a@example.org>"),
        ("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>"),
    ],
)
def test_rset_and_noop_work_in_every_state(verb: str, before: Sequence[str]) -> None:
    """RSET and NOOP are answered 250 before and after EHLO, MAIL and RCPT."""
    result = talk(lines(*before, verb, "QUIT"))
    assert result.replies[len(before) + 1] in (replies.OK, replies.RESET_OK)
    assert result.replies[len(before) + 1].code == 250


def test_rset_forgets_the_envelope_but_noop_does_not() -> None:
    """After RSET a new MAIL is needed; NOOP keeps the transaction."""
    kept = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", "NOOP", "RCPT TO:<b@example.org>",
                      "QUIT"))
    assert kept.replies[4] == replies.RECIPIENT_OK
    reset = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "RSET",
                       "RCPT TO:<b@example.org>", "DATA", "MAIL FROM:<c@example.org>", "QUIT"))
    assert reset.replies[4] == replies.RESET_OK
    assert reset.replies[5] == replies.NEED_MAIL
    assert reset.replies[6] == replies.NEED_MAIL
    assert reset.replies[7] == replies.SENDER_OK


def test_rset_with_an_argument_is_a_syntax_error() -> None:
    """RSET takes no argument (501)."""
    assert talk(lines("RSET now", "QUIT")).codes == [220, 501, 221]


def test_help_vrfy_expn() -> None:
    """HELP 214, VRFY 252 (501 without an argument), EXPN 502."""
    result = talk(lines("HELP", "VRFY postmaster", "VRFY", "EXPN staff", "HELP MAIL", "QUIT"))
    assert result.replies[1] == replies.HELP.format(auth="")
    assert result.replies[2] == replies.VRFY_CANNOT
    assert result.replies[3].code == 501
    assert result.replies[4] == replies.EXPN_REFUSED
    assert result.replies[5].code == 214
    assert result.raw.count(b"214 ") == 2


def test_help_mentions_auth_when_configured() -> None:
    """With --auth, HELP lists AUTH among the commands."""
    result = talk(lines("HELP", "QUIT"), auth_settings())
    assert result.replies[1] == replies.HELP.format(auth=" AUTH")


# -- errors: sequence, syntax, unknown ---------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (("MAIL FROM:<a@example.org>",), replies.NEED_HELO),
        (("EHLO client.test", "RCPT TO:<b@example.org>"), replies.NEED_MAIL),
        (("EHLO client.test", "DATA"), replies.NEED_MAIL),
        (("EHLO client.test", "MAIL FROM:<a@example.org>", "DATA"), replies.NEED_RCPT),
        (("EHLO client.test", "MAIL FROM:<a@example.org>", "MAIL FROM:<c@example.org>"), replies.NESTED_MAIL),
        (("RCPT TO:<b@example.org>",), replies.NEED_MAIL),
    ],
)
def test_out_of_sequence_commands_get_503(script: Sequence[str], expected: Reply) -> None:
    """Commands in the wrong order get 503 and the session goes on."""
    result = talk(lines(*script, "NOOP", "QUIT"))
    assert result.replies[len(script)] == expected
    assert expected.code == 503
    assert result.codes[-2:] == [250, 221]


@pytest.mark.parametrize(
    "command",
    [
        "MAIL <a@example.org>",
        "MAIL TO:<a@example.org>",
        "MAIL FROM:",
        "MAIL FROM:<a@example.org",
        "MAIL FROM:<a b@example.org>",
        "MAIL FROM:<a@@example.org>",
        "MAIL",
    ],
)
def test_mail_syntax_errors_get_501(command: str) -> None:
    """Malformed MAIL commands get 501; the session goes on."""
    result = talk(lines("EHLO client.test", command, "MAIL FROM:<ok@example.org>", "QUIT"))
    assert result.codes == [220, 250, 501, 250, 221]


@pytest.mark.parametrize(
    "command",
    ["RCPT <b@example.org>", "RCPT TO:", "RCPT TO:<>", "RCPT TO:<b@example.org", "RCPT TO:<b@[1.2.3.4>"],
)
def test_rcpt_syntax_errors_get_501(command: str) -> None:
    """Malformed RCPT commands (including the null path) get 501."""
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", command, "RCPT TO:<b@example.org>",
                        "QUIT"))
    assert result.codes == [220, 250, 250, 501, 250, 221]


def test_data_with_an_argument_is_a_syntax_error() -> None:
    """``DATA now`` is 501 and does not start the message."""
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>",
                        "DATA now", "NOOP", "QUIT"))
    assert result.codes == [220, 250, 250, 250, 501, 250, 221]


@pytest.mark.parametrize("command", ["FOO", "MAILFROM:<a@example.org>", "X", "", "   "])
def test_unknown_verbs_get_500(command: str) -> None:
    """Unknown verbs (and empty lines) are 500 and the session goes on."""
    result = talk(lines(command, "NOOP", "QUIT"))
    assert result.replies[1] == replies.UNRECOGNISED
    assert result.codes[2:] == [250, 221]


@pytest.mark.parametrize("command",
                         ["TURN", "STARTTLS", "ETRN example.org", "SEND FROM:<a@b>"])
def test_not_implemented_verbs_get_502(command: str) -> None:
    """Known but unimplemented verbs are 502 and the session goes on."""
    result = talk(lines(command, "NOOP", "QUIT"))
    assert result.replies[1] == replies.NOT_IMPLEMENTED
    assert result.codes[2:] == [250, 221]


def test_auth_without_auth_configured_is_502() -> None:
    """AUTH is not offered without --auth: 502."""
    result = talk(lines("EHLO client.test", "AUTH PLAIN AHVzZXIAc2VjcmV0", "QUIT"))
    assert result.replies[2] == replies.NOT_IMPLEMENTED


def test_the_session_goes_on_after_every_kind_of_error() -> None:
    """A mix of errors does not stop a following transaction from being delivered."""
    result = talk(lines("BOGUS", "MAIL FROM:<a@example.org>", "TURN", "EHLO client.test",
                        "RCPT TO:<b@example.org>", "MAIL FROM:<-x@example.org>", "MAIL FROM:<bad bad>",
                        "EHLO client.test", *transaction(), "QUIT"))
    assert result.codes[1:8] == [500, 503, 502, 250, 503, 553, 501]
    assert result.codes[8:] == [250, 250, 250, 354, 250, 221]
    assert len(result.mails) == 1


# -- the error bound -------------------------------------------------------


def test_too_many_errors_in_a_row_end_the_session() -> None:
    """MAX_CONSECUTIVE_ERRORS errors in a row: each is answered, then 421 and run() False."""
    result = talk(lines(*["BOGUS"] * (MAX_CONSECUTIVE_ERRORS + 5), "QUIT"))
    assert result.replies[1:-1] == [replies.UNRECOGNISED] * MAX_CONSECUTIVE_ERRORS
    assert result.replies[-1] == replies.TOO_MANY_ERRORS.format(host=HOST)
    assert result.quit is False


def test_a_success_resets_the_error_count() -> None:
    """Errors separated by a success never reach the bound."""
    almost = ["BOGUS"] * (MAX_CONSECUTIVE_ERRORS - 1)
    result = talk(lines(*almost, "NOOP", *almost, "RSET", *almost, "QUIT"))
    assert 421 not in result.codes
    assert result.codes[-1] == 221
    assert result.quit is True


def test_mixed_errors_count_towards_the_bound() -> None:
    """Different kinds of errors (500, 501, 502, 503) count together."""
    kinds = ["BOGUS", "EHLO", "TURN", "DATA"]
    script = [kinds[i % 4] for i in range(MAX_CONSECUTIVE_ERRORS)]
    result = talk(lines(*script, "QUIT"))
    assert result.codes[-1] == 421
    assert len(result.replies) == MAX_CONSECUTIVE_ERRORS + 2


# -- line bounds and encoding -------------------------------------------------


def test_an_over_long_command_line_is_500_and_the_session_goes_on() -> None:
    """A line longer than MAX_COMMAND_LINE is answered 500, skipped whole, and
    the next command is answered normally."""
    long_line = "MAIL FROM:<" + "a" * (MAX_COMMAND_LINE * 3) + "@example.org>"
    result = talk(lines("EHLO client.test", long_line, "MAIL FROM:<a@example.org>", "QUIT"))
    assert result.replies[2] == replies.LINE_TOO_LONG
    assert result.codes[3:] == [250, 221]
    assert len(result.replies) == 5


def test_a_command_line_at_the_bound_is_accepted() -> None:
    """A line of exactly MAX_COMMAND_LINE octets (CRLF included) is a normal command."""
    padding = "x" * (MAX_COMMAND_LINE - len("NOOP \r\n"))
    result = talk(lines(f"NOOP {padding}", "QUIT"))
    assert len(f"NOOP {padding}\r\n") == MAX_COMMAND_LINE
    assert result.codes == [220, 250, 221]


def test_an_over_long_last_line_without_newline_ends_quietly() -> None:
    """A client that sends an over-long line and disconnects ends the session (False)."""
    result = talk(b"NOOP " + b"x" * (MAX_COMMAND_LINE * 2))
    assert result.quit is False
    assert result.codes == [220]


@pytest.mark.parametrize(
    "raw",
    [b"NOOP \xff\xfe\r\n", b"EHLO caf\xe9\r\n", b"NO\x00OP\r\n", b"EHLO a\x00b\r\n", b"EHLO a\rb\r\n",
     b"NOOP \x1b[31m\r\n", b"NOOP \x7f\r\n"],
)
def test_invalid_utf8_or_control_characters_get_500(raw: bytes) -> None:
    """A command that is not UTF-8 or holds NUL or other control characters is 500."""
    result = talk(raw + lines("NOOP", "QUIT"))
    assert result.replies[1] == replies.BAD_ENCODING
    assert result.codes[2:] == [250, 221]


# -- pipelining --------------------------------------------------------------


def test_pipelined_commands_are_answered_in_order() -> None:
    """Everything sent in one write (RFC 2920) is answered in order, including
    the commands after the final dot."""
    script = lines("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "RCPT TO:<>",
                   "RCPT TO:<c@example.org>", "DATA", "pipelined\r\n.", "MAIL FROM:<d@example.org>",
                   "RCPT TO:<e@example.org>", "DATA", "second\r\n.", "QUIT")
    result = talk(scripted(script))
    assert result.codes == [220, 250, 250, 250, 501, 250, 354, 250, 250, 250, 354, 250, 221]
    assert [m.recipients for m in result.mails] == [["b@example.org", "c@example.org"], ["e@example.org"]]
    assert [body_of(m.data) for m in result.mails] == [b"pipelined\n", b"second\n"]


def test_replies_are_flushed_before_waiting_for_input() -> None:
    """Held-back pipelining replies all go out before the session waits for
    more input (RFC 2920 section 3.1), so a pipelining client never deadlocks."""

    class Wire(io.BytesIO):
        """A writer whose data only counts as sent once flushed."""

        sent = b""

        def flush(self) -> None:
            self.sent = self.getvalue()

    wire = Wire()
    batches = [lines("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA"),
               b"body\r\n.\r\nMAIL FROM:<c@example.org>\r\n", lines("RCPT TO:<d@example.org>", "NOOP"),
               lines("QUIT")]
    unsent_at_read: List[bytes] = []

    def recv(size: int) -> bytes:
        unsent_at_read.append(wire.getvalue()[len(wire.sent):])
        return batches.pop(0) if batches else b""

    assert Session(in_memory(recv, wire), Settings(hostname=HOST), FakeDeliver()).run() is True
    assert unsent_at_read == [b""] * len(unsent_at_read)
    assert [r.code for r in parse_replies(wire.sent)] == [220, 250, 250, 250, 354, 250, 250, 250, 250, 221]


def test_ehlo_again_resets_the_transaction() -> None:
    """A new EHLO in the middle of a transaction forgets the envelope (like RSET)."""
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org>", "EHLO client.test",
                        "RCPT TO:<b@example.org>", "MAIL FROM:<a@example.org>", "QUIT"))
    assert result.replies[4] == replies.NEED_MAIL
    assert result.replies[5] == replies.SENDER_OK


def test_pipelined_commands_in_tiny_pieces() -> None:
    """The same conversation delivered a few bytes at a time gives the same answers."""
    script = lines("EHLO client.test", *transaction(), "QUIT")
    chunks = [script[i:i + 3] for i in range(0, len(script), 3)]
    result = talk(scripted(*chunks))
    assert result.codes == [220, 250, 250, 250, 354, 250, 221]
    assert body_of(result.mails[0].data) == b"Subject: hi\n\nhello\n"


# -- addresses in the session ----------------------------------------------


def test_null_sender_is_accepted() -> None:
    """``MAIL FROM:<>`` is the null sender: deliver gets an empty sender."""
    result = talk(lines("EHLO client.test", *transaction(sender="<>"), "QUIT"))
    assert result.replies[2] == replies.SENDER_OK
    assert result.mails[0].sender == ""


def test_quoted_local_parts_are_accepted() -> None:
    """Quoted local parts with spaces, '>' and escapes pass through unchanged."""
    rcpts = ['<"john doe"@example.org>', '<"a>b"@example.org>', '<"x\\"y"@example.org>']
    sender = '<"odd sender"@example.org>'
    result = talk(lines("EHLO client.test", *transaction(sender=sender, recipients=rcpts), "QUIT"))
    assert result.codes == [220, 250, 250, 250, 250, 250, 354, 250, 221]
    mail = result.mails[0]
    assert mail.sender == '"odd sender"@example.org'
    assert mail.recipients == ['"john doe"@example.org', '"a>b"@example.org', '"x\\"y"@example.org']


def test_utf8_addresses_with_smtputf8() -> None:
    """Non-ASCII addresses are accepted when MAIL FROM carries SMTPUTF8."""
    mail = transaction(sender="<jörg@exämple.de>", recipients=["<δοκιμή@παράδειγμα.δοκιμή>"],
                       mail_params="SMTPUTF8")
    result = talk(lines("EHLO client.test", *mail, "QUIT"))
    assert result.codes == [220, 250, 250, 250, 354, 250, 221]
    assert result.mails[0].sender == "jörg@exämple.de"
    assert result.mails[0].recipients == ["δοκιμή@παράδειγμα.δοκιμή"]
    assert b" with UTF8SMTP;" in result.mails[0].data


def test_utf8_addresses_without_smtputf8_get_553_5_6_7() -> None:
    """Without SMTPUTF8, a non-ASCII sender or recipient is refused with 553 5.6.7."""
    result = talk(lines("EHLO client.test", "MAIL FROM:<jörg@example.de>", "MAIL FROM:<a@example.org>",
                        "RCPT TO:<b@exämple.de>", "QUIT"))
    assert result.replies[2] == replies.NEEDS_SMTPUTF8
    assert result.replies[2].text.startswith("5.6.7")
    assert result.replies[3] == replies.SENDER_OK
    assert result.replies[4] == replies.NEEDS_SMTPUTF8


@pytest.mark.parametrize("path",
                         ["<-oProxyCommand=touch@example.org>", "<-f>", "<@relay.example:-x@example.org>"])
def test_addresses_starting_with_a_dash_are_refused(path: str) -> None:
    """A path that a command could take for an option is refused (553) as sender and recipient."""
    result = talk(lines("EHLO client.test", f"MAIL FROM:{path}", "MAIL FROM:<a@example.org>",
                        f"RCPT TO:{path}", "QUIT"))
    assert result.replies[2].code == 553
    assert result.replies[2].text.startswith("5.1.3 Address refused")
    assert result.replies[3] == replies.SENDER_OK
    assert result.replies[4].code == 553


@pytest.mark.parametrize(
    "path",
    [
        "<" + "l" * 65 + "@example.org>",
        "<user@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 63 + "." + "d" * 63 + "." + "d" * 10 + ">",
        "<" + "l" * 60 + "@" + ("d" * 60 + ".") * 3 + "d" * 20 + ">",
    ],
)
def test_over_long_addresses_are_refused(path: str) -> None:
    """Over-long local parts, domains and paths are refused (501) in MAIL and RCPT."""
    result = talk(lines("EHLO client.test", f"MAIL FROM:{path}", "MAIL FROM:<a@example.org>",
                        f"RCPT TO:{path}", "QUIT"))
    assert result.replies[2].code == 501
    assert result.replies[3] == replies.SENDER_OK
    assert result.replies[4].code == 501


# -- timeouts and disconnects ------------------------------------------------


def test_idle_timeout_ends_the_session_with_421() -> None:
    """A recv that times out gets 421 and run() returns False."""
    result = talk(scripted(lines("EHLO client.test"), end=TimeoutError("idle")))
    assert result.replies[-1] == replies.TIMEOUT.format(host=HOST)
    assert result.codes == [220, 250, 421]
    assert result.quit is False


def test_timeout_during_data_delivers_nothing() -> None:
    """A client that goes silent before the final dot gets 421; nothing is delivered."""
    deliver = FakeDeliver()
    result = talk(scripted(lines(*TRANSACTION), b"Subject: half\r\n\r\nno end", end=TimeoutError()),
                  deliver=deliver)
    assert result.codes == [220, 250, 250, 250, 354, 421]
    assert deliver.mails == []
    assert result.quit is False


@pytest.mark.parametrize(
    "tail", [b"", b"Subject: cut\r\n\r\nhalf a line", b"body\r\n", b"body\r\n.", b"body\r\n.\r", b"x\n.\n"])
def test_disconnect_during_data_delivers_nothing(tail: bytes) -> None:
    """A client that disconnects before CRLF.CRLF causes no delivery and run() False."""
    deliver = FakeDeliver()
    result = talk(lines(*TRANSACTION) + tail, deliver=deliver)
    assert deliver.mails == []
    assert result.codes == [220, 250, 250, 250, 354]
    assert result.quit is False


def test_shutdown_request_is_answered_421() -> None:
    """A recv raising ShutdownRequested closes politely with 421."""
    result = talk(scripted(lines("EHLO client.test"), end=ShutdownRequested()))
    assert result.replies[-1] == replies.SHUTTING_DOWN.format(host=HOST)
    assert result.quit is False


@pytest.mark.parametrize("good_writes", [0, 1])
def test_writer_failure_ends_the_session(good_writes: int) -> None:
    """A client whose connection breaks while being answered (even at the
    greeting) ends the session with run() False, not an exception.  The
    greeting is one write, the replies to the pipelined batch the next."""

    class Broken(io.BytesIO):
        writes = 0

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.writes += 1
            if self.writes > good_writes:
                raise BrokenPipeError()
            return super().write(data)

    connection = in_memory(io.BytesIO(lines("NOOP", "NOOP", "QUIT")).read1, Broken())
    assert Session(connection, Settings(), FakeDeliver()).run() is False


# -- delivery results ------------------------------------------------------


def test_delivery_failure_is_passed_through_and_the_session_stays_usable() -> None:
    """The deliver reply (e.g. 451 or 554) reaches the client; a second mail still works."""
    failure = replies.DELIVERY_TEMPFAIL.format(why="command exit status 75 (EX_TEMPFAIL)")
    permanent = replies.DELIVERY_FAILED.format(why="command exit status 1")
    deliver = FakeDeliver(failure, permanent)
    script = lines("EHLO client.test", *transaction(), *transaction(), *transaction(), "QUIT")
    result = talk(script, deliver=deliver)
    assert result.replies[5] == failure
    assert result.replies[9] == permanent
    assert result.replies[13] == replies.DELIVERED
    assert result.quit is True
    assert len(deliver.mails) == 3


def test_each_transaction_starts_clean() -> None:
    """After a delivered mail, the next MAIL starts a new envelope."""
    result = talk(lines("EHLO client.test", *transaction(), "RCPT TO:<late@example.org>",
                        *transaction(sender="<second@example.org>", recipients=["<x@example.org>"]), "QUIT"))
    assert result.replies[6] == replies.NEED_MAIL
    assert [(m.sender, m.recipients) for m in result.mails] == [
        ("alice@example.org", ["bob@example.net"]), ("second@example.org", ["x@example.org"])]


# -- the Received: header --------------------------------------------------


RECEIVED_FIRST_LINE = re.compile(rb"^Received: from ([^\s()]+) \(\[192\.0\.2\.7\]\)$")


def test_received_header_comes_first() -> None:
    """The delivered mail begins with a Received: header naming the HELO name, the peer and the host."""
    result = talk(lines("EHLO client.test", *transaction(body="From: a@example.org\r\n\r\nhi\r\n"), "QUIT"))
    data = result.mails[0].data
    first, second, third, rest = data.split(b"\n", 3)
    assert RECEIVED_FIRST_LINE.match(first)
    assert first == b"Received: from client.test ([192.0.2.7])"
    assert second == f"\tby {HOST} (msmtpd) with ESMTP;".encode()
    assert third.startswith(b"\t")
    assert rest == b"From: a@example.org\n\nhi\n"


@pytest.mark.parametrize(
    "name",
    ["evil)\tX-Injected:", "a(b)c", "x) by attacker (y", "name\\) (z", "\u00e9vil", "a;b", "[1.2.3.4]"],
)
def test_helo_name_cannot_break_the_received_header(name: str) -> None:
    """Parentheses, backslashes, tabs and non-ASCII in the HELO name are neutralised:
    the first line stays one well-formed token, the header stays three lines."""
    result = talk(lines(f"EHLO {name}", *transaction(body="Subject: t\r\n\r\nb\r\n"), "QUIT"))
    assert result.codes[1] == 250
    data = result.mails[0].data
    header = data.split(b"\n")[:3]
    assert RECEIVED_FIRST_LINE.match(header[0]), header[0]
    assert all(line.startswith(b"\t") for line in header[1:])
    assert body_of(data) == b"Subject: t\n\nb\n"


@pytest.mark.parametrize("smuggled", [b"\r", b"\n", b"\x00", b"\r\n"])
def test_helo_name_with_line_breaks_cannot_inject_a_header(smuggled: bytes) -> None:
    """CR, LF or NUL in the HELO name never put a new line into the mail's header."""
    script = b"EHLO evil" + smuggled + b"X-Injected: yes\r\n" + lines("HELO fallback", *transaction(), "QUIT")
    result = talk(script)
    [mail] = result.mails
    assert not any(line.startswith(b"X-Injected") for line in mail.data.split(b"\n"))
    assert b"\0" not in mail.data and b"\r" not in mail.data


@pytest.mark.parametrize("name", ["a\rX-Injected: 1", "a\nX-Injected: 1", "a\0b", "a(b)", "a\\b", "", "a b"])
def test_sanitise_helo_leaves_only_a_safe_token(name: str) -> None:
    """sanitise_helo leaves printable ASCII without comment delimiters or white space."""
    cleaned = sanitise_helo(name)
    assert cleaned
    assert all(32 < ord(c) < 127 and c not in "()\\" for c in cleaned)


def test_long_helo_name_is_cut_in_the_header() -> None:
    """A very long HELO name is cut to MAX_HELO_IN_HEADER characters in the header."""
    result = talk(lines("EHLO " + "h" * 2000, *transaction(), "QUIT"))
    first = result.mails[0].data.split(b"\n", 1)[0]
    assert first == b"Received: from " + b"h" * MAX_HELO_IN_HEADER + b" ([192.0.2.7])"


# -- AUTH --------------------------------------------------------------------


USER, PASSWORD = "mailer", "s3cret pass"
RIGHT_PLAIN = auth_plain(USER, PASSWORD)  # the AUTH PLAIN response that logs in


def auth_settings(shared: Optional[types.SimpleNamespace] = None) -> Settings:
    clock = FailureClock(shared if shared is not None else types.SimpleNamespace(value=0.0))
    return Settings(hostname=HOST, auth=PasswordCheck(USER, PASSWORD, clock))




def auth_talk(*commands: str, shared: Optional[types.SimpleNamespace] = None) -> Result:
    return talk(lines("EHLO client.test", *commands), auth_settings(shared))


def test_auth_plain_with_initial_response(sleeps: List[float]) -> None:
    """AUTH PLAIN with the credentials on the command line succeeds (235) and allows MAIL."""
    result = auth_talk(f"AUTH PLAIN {RIGHT_PLAIN}", *transaction(), "QUIT")
    assert result.replies[2] == replies.AUTH_OK
    assert result.codes[3:] == [250, 250, 354, 250, 221]
    assert b" with ESMTPA;" in result.mails[0].data
    assert sleeps == []


def test_auth_plain_after_a_334_challenge(sleeps: List[float]) -> None:
    """AUTH PLAIN without initial response gets ``334 `` and then reads the credentials."""
    result = auth_talk("AUTH PLAIN", RIGHT_PLAIN, "MAIL FROM:<a@example.org>", "QUIT")
    assert result.replies[2] == Reply(334, "")
    assert b"\r\n334 \r\n" in result.raw
    assert result.replies[3] == replies.AUTH_OK
    assert result.replies[4] == replies.SENDER_OK


def test_auth_plain_with_an_authzid(sleeps: List[float]) -> None:
    """AUTH PLAIN with an authorisation identity (the same user) succeeds."""
    result = auth_talk(f"AUTH PLAIN {auth_plain(USER, PASSWORD, authzid=USER)}", "MAIL FROM:<a@example.org>",
                       "QUIT")
    assert result.replies[2] == replies.AUTH_OK
    assert result.replies[3] == replies.SENDER_OK


def test_auth_login(sleeps: List[float]) -> None:
    """AUTH LOGIN asks for user name and password (334 Username:/Password:) and succeeds."""
    result = auth_talk("auth login", b64(USER), b64(PASSWORD), "MAIL FROM:<a@example.org>", "QUIT")
    assert result.replies[2] == Reply(334, b64("Username:"))
    assert result.replies[3] == Reply(334, b64("Password:"))
    assert result.replies[4] == replies.AUTH_OK
    assert result.replies[5] == replies.SENDER_OK


def test_auth_login_with_initial_user(sleeps: List[float]) -> None:
    """AUTH LOGIN with the user name on the command line asks only for the password."""
    result = auth_talk(f"AUTH LOGIN {b64(USER)}", b64(PASSWORD), "QUIT")
    assert result.replies[2] == Reply(334, b64("Password:"))
    assert result.replies[3] == replies.AUTH_OK


@pytest.mark.parametrize("commands",
                         [("AUTH PLAIN", "*"), ("AUTH LOGIN", "*"), ("AUTH LOGIN", b64(USER), "*")])
def test_auth_cancelled_with_a_star(commands: Sequence[str], sleeps: List[float]) -> None:
    """``*`` in answer to a 334 cancels the exchange (501) and the session goes on unauthenticated."""
    result = auth_talk(*commands, "MAIL FROM:<a@example.org>", "QUIT")
    assert result.replies[len(commands) + 1] == replies.AUTH_CANCELLED
    assert result.replies[len(commands) + 2] == replies.AUTH_REQUIRED
    assert result.codes[-1] == 221


@pytest.mark.parametrize(
    "commands",
    [("AUTH PLAIN !!!notbase64",), ("AUTH PLAIN", "@@@"), ("AUTH LOGIN", "%%%"),
     ("AUTH LOGIN", b64(USER), "~~~")],
)
def test_auth_bad_base64_is_501(commands: Sequence[str], sleeps: List[float]) -> None:
    """A response that is not valid base64 is 501 (tests/unit/test_auth_plain.py: one that is
    base64 but not PLAIN's three parts)."""
    result = auth_talk(*commands, "QUIT")
    assert result.replies[len(commands) + 1] == replies.AUTH_BAD_BASE64
    assert result.codes[-1] == 221


def test_second_auth_after_success_is_503(sleeps: List[float]) -> None:
    """Once authenticated, another AUTH is 503."""
    result = auth_talk(f"AUTH PLAIN {RIGHT_PLAIN}", f"AUTH PLAIN {RIGHT_PLAIN}", "QUIT")
    assert result.replies[3] == replies.ALREADY_AUTHENTICATED


def test_auth_unknown_mechanism_is_504(sleeps: List[float]) -> None:
    """An unsupported mechanism is 504; a bare AUTH is 501."""
    result = auth_talk("AUTH CRAM-MD5", "AUTH", "QUIT")
    assert result.replies[2] == replies.AUTH_MECHANISM
    assert result.replies[3].code == 501


def test_auth_needs_ehlo_first(sleeps: List[float]) -> None:
    """AUTH before EHLO (or after plain HELO) is 503."""
    result = talk(lines(f"AUTH PLAIN {RIGHT_PLAIN}", "HELO client.test", f"AUTH PLAIN {RIGHT_PLAIN}", "QUIT"),
                  auth_settings())
    assert result.replies[1] == replies.NEED_HELO
    assert result.replies[3] == replies.NEED_HELO


@pytest.mark.parametrize("command", ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA"])
def test_transaction_before_auth_is_530(command: str, sleeps: List[float]) -> None:
    """With --auth, MAIL, RCPT and DATA before authenticating get 530."""
    result = auth_talk(command, "NOOP", "RSET", "HELP", "QUIT")
    assert result.replies[2] == replies.AUTH_REQUIRED
    assert result.codes[3:] == [250, 250, 214, 221]


def test_wrong_password_is_535(sleeps: List[float]) -> None:
    """A wrong password or user is 535; a correct retry then succeeds."""
    result = auth_talk(f"AUTH PLAIN {auth_plain(USER, 'wrong')}",
                       f"AUTH PLAIN {auth_plain('root', PASSWORD)}", f"AUTH PLAIN {RIGHT_PLAIN}", "QUIT")
    assert result.replies[2] == replies.AUTH_FAILED
    assert result.replies[3] == replies.AUTH_FAILED
    assert result.replies[4] == replies.AUTH_OK


def test_too_many_auth_failures_end_the_session(sleeps: List[float]) -> None:
    """MAX_AUTH_FAILURES failures: the last is answered 535, then 421 and run() False."""
    attempts = [f"AUTH PLAIN {auth_plain(USER, f'guess{i}')}" for i in range(MAX_AUTH_FAILURES + 2)]
    result = auth_talk(*attempts, "QUIT")
    assert result.replies[2:-1] == [replies.AUTH_FAILED] * MAX_AUTH_FAILURES
    assert result.replies[-1] == replies.TOO_MANY_AUTH_FAILURES.format(host=HOST)
    assert result.quit is False


def test_auth_is_delayed_after_a_recorded_failure(sleeps: List[float]) -> None:
    """After a failure, the next AUTH answer waits FAILURE_DELAY (time.sleep is called)."""
    shared = types.SimpleNamespace(value=0.0)
    result = auth_talk(f"AUTH PLAIN {auth_plain(USER, 'wrong')}", f"AUTH PLAIN {RIGHT_PLAIN}", "QUIT",
                       shared=shared)
    assert result.codes[2:] == [535, 235, 221]
    assert shared.value > 0.0
    assert sleeps == [FAILURE_DELAY]


def test_failure_clock_shared_between_checks(sleeps: List[float]) -> None:
    """A failure recorded through one PasswordCheck delays another one sharing the value;
    with no failure recorded there is no delay; without a shared value there always is."""
    shared = types.SimpleNamespace(value=0.0)
    first = PasswordCheck(USER, PASSWORD, FailureClock(shared))
    second = PasswordCheck(USER, PASSWORD, FailureClock(shared))
    second.wait()
    assert sleeps == []
    first.failed()
    second.wait()
    assert sleeps == [FAILURE_DELAY]
    PasswordCheck(USER, PASSWORD, FailureClock()).wait()
    assert sleeps == [FAILURE_DELAY, FAILURE_DELAY]


def test_password_check_compares_user_and_password() -> None:
    """check() needs both the user and the password to match exactly."""
    check = PasswordCheck(USER, PASSWORD, FailureClock(types.SimpleNamespace(value=0.0)))
    assert check.check(USER.encode(), PASSWORD.encode())
    assert not check.check(USER.encode(), PASSWORD.encode() + b" ")
    assert not check.check(USER.upper().encode(), PASSWORD.encode())
    assert not check.check(b"", b"")


def test_auth_payload_is_not_echoed(sleeps: List[float]) -> None:
    """Nothing the server sends contains the password."""
    result = auth_talk(f"AUTH PLAIN {RIGHT_PLAIN}", "AUTH LOGIN", "QUIT")
    assert PASSWORD.encode() not in result.raw
    assert RIGHT_PLAIN.encode() not in result.raw


def test_only_the_greeting_verbs_work_before_auth(sleeps: List[float]) -> None:
    """Before authenticating, VRFY and EXPN are refused like MAIL (530);
    NOOP, RSET and HELP still work (contract 8)."""
    result = auth_talk("VRFY someone", "EXPN list", "NOOP", "RSET", "HELP", "QUIT")
    assert result.codes[2:] == [530, 530, 250, 250, 214, 221]


# -- TLS policy (the handshake itself is tested with real clients in test_tls.py) --

TLS_CONTEXT = object()  # stands for the ssl.SSLContext: these sessions never shake hands


def tls_settings(**options: object) -> Settings:
    settings = Settings(hostname=HOST, tls=TLS_CONTEXT, **options)  # type: ignore[arg-type]
    return settings


def test_starttls_without_a_certificate_is_not_implemented() -> None:
    result = talk(lines("EHLO client.test", "STARTTLS", "QUIT"))
    assert "STARTTLS" not in result.replies[1].text
    assert result.replies[2] == replies.NOT_IMPLEMENTED


def test_starttls_with_an_argument_is_a_syntax_error() -> None:
    result = talk(lines("EHLO client.test", "STARTTLS now", "QUIT"), tls_settings())
    assert result.replies[2].code == 501


def test_starttls_on_something_that_is_not_a_socket_is_454_and_not_offered() -> None:
    """--inetd on a pipe: TLS cannot be had, so EHLO does not offer it."""
    result = talk(lines("EHLO client.test", "STARTTLS", "QUIT"), tls_settings())
    assert "STARTTLS" not in result.replies[1].text.split("\n")
    assert result.replies[2] == replies.TLS_UNAVAILABLE
    assert result.codes[-1] == 221


@pytest.mark.parametrize("verb", ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA",
                                  "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "VRFY root", "EXPN staff"])
def test_tls_required_refuses_everything_but_the_greeting_verbs(verb: str) -> None:
    result = talk(lines("EHLO client.test", verb, "QUIT"), tls_settings(tls_required=True))
    assert result.replies[2] == replies.TLS_REQUIRED
    assert result.replies[2].text == "5.7.0 Must issue a STARTTLS command first"


@pytest.mark.parametrize("verb", ["NOOP", "RSET", "HELP", "HELO client.test", "EHLO client.test"])
def test_tls_required_allows_what_rfc_3207_allows(verb: str) -> None:
    result = talk(lines("EHLO client.test", verb, "QUIT"), tls_settings(tls_required=True))
    assert result.replies[2].code in (214, 250)


def test_auth_from_a_remote_peer_needs_tls_when_a_certificate_is_configured() -> None:
    settings = auth_settings()
    settings.tls = TLS_CONTEXT
    result = talk(lines("EHLO client.test", f"AUTH PLAIN {RIGHT_PLAIN}", "QUIT"), settings, peer="192.0.2.7")
    assert "AUTH PLAIN LOGIN" not in result.replies[1].text
    assert result.replies[2] == replies.ENCRYPTION_REQUIRED
    assert result.replies[2].text.startswith("5.7.11 Encryption required")


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "::ffff:127.0.0.1", ""])
def test_auth_from_this_machine_keeps_working_in_plain_text(peer: str) -> None:
    settings = auth_settings()
    settings.tls = TLS_CONTEXT
    result = talk(lines("EHLO client.test", f"AUTH PLAIN {RIGHT_PLAIN}", "QUIT"), settings, peer=peer)
    assert "AUTH PLAIN LOGIN" in result.replies[1].text.split("\n")
    assert result.replies[2] == replies.AUTH_OK


def test_help_lists_starttls_when_configured() -> None:
    result = talk(lines("HELP", "QUIT"), tls_settings())
    assert " STARTTLS" in result.replies[1].text
