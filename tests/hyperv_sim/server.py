# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""HTTPS server speaking the WS-Management Shell exchange pywinrm uses, with NTLM authentication.

Create (open a shell), Command (run one command line), Receive (its output), Signal (terminate) and
Delete (close the shell), each answered with the envelope pywinrm parses. NTLM is checked for real
(pyspnego acting as the server against a user file), once per TCP connection as Windows does. Commands go to
model.HyperVHost.execute(), which runs only the collection's shipped scripts.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import os
import ssl
import re
import threading
import time
import typing as t
import uuid
import xml.etree.ElementTree as ET

import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .model import HyperVHost, ScriptRejected

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "create",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "delete",
    f"{SHELL_URI}/Command": "command",
    f"{SHELL_URI}/Receive": "receive",
    f"{SHELL_URI}/Signal": "signal",
    f"{SHELL_URI}/Send": "send",
}


MUTUAL = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"


def make_certificate(directory: str, host: str = "127.0.0.1", common_name: str = "vmsafe hyperv simulator",
                     prefix: str = "sim") -> tuple[str, str]:
    """Write a self-signed certificate (its own CA) for ``host``; return (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, f"{prefix}-cert.pem"), os.path.join(directory, f"{prefix}-key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}">'
            f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
            f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>").encode()


# The WSManFault code WinRM answers a Receive with when no output came within the OperationTimeout.
RECEIVE_TIMEOUT_CODE = 2150858793


def _fault(relates_to: str, text: str, code: int = 2150858843) -> bytes:
    safe = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to,
                     f"<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:TimedOut</s:Value>"
                     f"</s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en-US\">{safe}</s:Text></s:Reason>"
                     f"<s:Detail><f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" "
                     f"Code=\"{code}\"/></s:Detail></s:Fault>")


class Simulator:
    """The running server: ``with Simulator(tmpdir) as sim: ...`` (stops on exit)."""

    def __init__(self, directory: str, username: str = "vmsafe", password: str = "s3cret-P@ss") -> None:
        self.host = HyperVHost()
        self.username, self.password = username, password
        self.cert_path, self.key_path = make_certificate(directory)
        # Certificate authentication: the client certificate the server trusts and maps to ``username``
        # (what New-Item WSMan:\\localhost\\ClientCertificate does on Windows), and one it does not trust.
        self.client_cert, self.client_key = make_certificate(directory, common_name=username, prefix="client")
        self.stranger_cert, self.stranger_key = make_certificate(directory, common_name=username, prefix="stranger")
        self.user_file = os.path.join(directory, "ntlm-users")
        with open(self.user_file, "w", encoding="utf-8") as handle:
            handle.write(f":{username}:{password}\n")
        # shell id -> command id -> ((stdout, stderr, exit code), monotonic time the output is ready)
        self.shells: dict[str, dict[str, tuple[tuple[bytes, bytes, int], float]]] = {}
        self.stdin: dict[str, tuple[str, str, bytearray]] = {}  # command id -> (command, arguments, stdin so far)
        self.terminated: list[str] = []  # command ids ended by Signal before their output was read
        self.auth_failures = 0
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else 0

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # pyspnego's NTLM acceptor reads its users from this file; put back whatever was there on stop().
        self.saved_user_file = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = self.user_file
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate only for transport=certificate
        context.load_verify_locations(self.client_cert)
        sim = self

        class Handler(WsmanHandler):
            simulator = sim

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="hyperv-sim", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(10)
            self.thread = None
        if getattr(self, "saved_user_file", None) is None:
            os.environ.pop("NTLM_USER_FILE", None)
        else:
            os.environ["NTLM_USER_FILE"] = self.saved_user_file


class WsmanHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: NTLM authenticates the connection
    simulator: t.ClassVar[Simulator]

    def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
        """Quiet: the tests assert on behaviour, not on access logs."""

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, OSError):
            pass  # a client that refused our certificate hangs up mid-handshake: that is a test case

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authenticate(self) -> bool:
        """Run NTLM on this connection; return True once it is authenticated (answers 401 meanwhile)."""
        if getattr(self, "authenticated", False):
            return True
        header = self.headers.get("Authorization", "")
        if header == MUTUAL:
            peer = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            subject = dict(item[0] for item in (peer or {}).get("subject", ()))
            if subject.get("commonName") != self.simulator.username:
                self.simulator.auth_failures += 1
                self._send(401, headers={"WWW-Authenticate": "Negotiate"})
                return False
            self.authenticated = True
            return True
        scheme, _sep, token = header.partition(" ")
        if scheme.lower() not in ("ntlm", "negotiate") or not token:
            self.ntlm = None
            self._send(401, headers={"WWW-Authenticate": "Negotiate"})
            return False
        if getattr(self, "ntlm", None) is None:
            self.ntlm = spnego.server(protocol="ntlm")
        try:
            out = self.ntlm.step(base64.b64decode(token))
        except spnego.exceptions.SpnegoError:
            self.ntlm = None
            self.simulator.auth_failures += 1
            self._send(401, headers={"WWW-Authenticate": "Negotiate"})
            return False
        if not self.ntlm.complete:
            self._send(401, headers={"WWW-Authenticate": f"{scheme} {base64.b64encode(out or b'').decode()}"})
            return False
        self.authenticated = True
        return True

    def do_POST(self) -> None:  # pylint: disable=invalid-name  # http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/wsman":
            self._send(404)
            return
        if not self._authenticate():
            return
        root = ET.fromstring(body)
        action = root.findtext("s:Header/a:Action", "", NS)
        message_id = root.findtext("s:Header/a:MessageID", "", NS)
        shell_id = root.findtext("s:Header/w:SelectorSet/w:Selector[@Name='ShellId']", "", NS)
        kind = ACTIONS.get(action)
        sim = self.simulator
        if kind is None:
            self._send(500, _fault(message_id, f"hyperv simulator: unsupported WS-Man action {action}"))
            return
        if kind != "create" and shell_id not in sim.shells:
            self._send(500, _fault(message_id, f"hyperv simulator: unknown shell {shell_id}"))
            return
        if kind == "create":
            new_id = str(uuid.uuid4()).upper()
            sim.shells[new_id] = {}
            reply = (f"<w:ResourceCreated><a:Address>https://127.0.0.1/wsman</a:Address><a:ReferenceParameters>"
                     f"<w:ResourceURI>{SHELL_URI}/cmd</w:ResourceURI><w:SelectorSet>"
                     f"<w:Selector Name=\"ShellId\">{new_id}</w:Selector></w:SelectorSet></a:ReferenceParameters>"
                     f"</w:ResourceCreated>")
            self._send(200, _envelope(action + "Response", message_id, reply))
        elif kind == "command":
            line = root.find("s:Body/rsp:CommandLine", NS)
            command = (line.findtext("rsp:Command", "", NS) if line is not None else "").strip()
            arguments = line.findtext("rsp:Arguments", "", NS) if line is not None else ""
            command_id = str(uuid.uuid4()).upper()
            if sim.host.reads_stdin(arguments):
                # runs once its stdin has ended (WS-Man Send with End="true"), as PowerShell reads $input to the end
                sim.stdin[command_id] = (command, arguments, bytearray())
            else:
                try:
                    output = sim.host.execute(command, arguments)
                except ScriptRejected as exc:
                    self._send(500, _fault(message_id, str(exc)))
                    return
                ready = time.monotonic() + sim.host.slow.get(sim.host.executed[-1], 0.0)
                sim.shells[shell_id][command_id] = (output, ready)
            reply = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
            self._send(200, _envelope(action + "Response", message_id, reply))
        elif kind == "send":
            stream = root.find("s:Body/rsp:Send/rsp:Stream", NS)
            command_id = stream.get("CommandId", "") if stream is not None else ""
            if command_id not in sim.stdin or stream.get("Name") != "stdin":
                self._send(500, _fault(message_id, f"hyperv simulator: Send to {command_id}, which reads no stdin"))
                return
            command, arguments, buffer = sim.stdin[command_id]
            buffer += base64.b64decode(stream.text or "")
            if stream.get("End") == "true":
                del sim.stdin[command_id]
                try:
                    output = sim.host.execute(command, arguments, stdin=bytes(buffer))
                except ScriptRejected as exc:
                    self._send(500, _fault(message_id, str(exc)))
                    return
                sim.shells[shell_id][command_id] = (output, time.monotonic())
            self._send(200, _envelope(action + "Response", message_id, "<rsp:SendResponse/>"))
        elif kind == "receive":
            command_id = root.find("s:Body/rsp:Receive/rsp:DesiredStream", NS).get("CommandId", "")
            (stdout, stderr, code), ready = sim.shells[shell_id].get(command_id, ((b"", b"", 0), 0.0))
            wait = ready - time.monotonic()
            if wait > 0:
                # Long-poll as WinRM does: at most the request's OperationTimeout, then a timeout fault.
                found = re.match(r"PT(\d+(?:\.\d+)?)S", root.findtext("s:Header/w:OperationTimeout", "PT60S", NS))
                limit = float(found.group(1)) if found else 60.0
                time.sleep(min(wait, limit))
                if ready > time.monotonic():
                    self._send(500, _fault(message_id, "The WS-Management service cannot complete the operation "
                                                       "within the time specified in OperationTimeout.",
                                           RECEIVE_TIMEOUT_CODE))
                    return
            streams = "".join(
                f"<rsp:Stream Name=\"{name}\" CommandId=\"{command_id}\">{base64.b64encode(data).decode()}</rsp:Stream>"
                for name, data in (("stdout", stdout), ("stderr", stderr)) if data)
            reply = (f"<rsp:ReceiveResponse>{streams}<rsp:Stream Name=\"stdout\" CommandId=\"{command_id}\" End=\"true\"/>"
                     f"<rsp:CommandState CommandId=\"{command_id}\" State=\"{SHELL_URI}/CommandState/Done\">"
                     f"<rsp:ExitCode>{code}</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>")
            self._send(200, _envelope(action + "Response", message_id, reply))
        elif kind == "signal":
            command_id = root.find("s:Body/rsp:Signal", NS).get("CommandId", "")
            entry = sim.shells[shell_id].pop(command_id, None)
            if entry is not None and entry[1] > time.monotonic():
                sim.terminated.append(command_id)
            self._send(200, _envelope(action + "Response", message_id, "<rsp:SignalResponse/>"))
        else:  # delete
            sim.shells.pop(shell_id, None)
            self._send(200, _envelope(action + "Response", message_id, ""))
