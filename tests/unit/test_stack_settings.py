"""What the local stack (``make serve``, ``make demo``) gives its hosts: the environment wins."""

from __future__ import annotations

from types import SimpleNamespace

from devhost.stack import Stack, fill_unset

AZURITE = SimpleNamespace(connection_string="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1")
USER_KEY = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuser"


def stack_env(environ: dict[str, str], **options: object) -> dict[str, str]:
    stack = Stack(environ=environ, http_port=17071, **options)  # type: ignore[arg-type]
    stack.azurite = AZURITE  # type: ignore[assignment]
    stack.simulator_url = "http://127.0.0.1:9"
    return stack.worker_env()


def test_the_stack_fills_in_only_what_the_environment_leaves_unset():
    assert fill_unset({"EMAIL_PROVIDER": "sendgrid", "TASK_SIZE": "500"}, {"EMAIL_PROVIDER": "smtp"}) == {
        "EMAIL_PROVIDER": "smtp", "TASK_SIZE": "500"}
    unset = {"EMAIL_PROVIDER": ""}
    assert fill_unset({"EMAIL_PROVIDER": "sendgrid"}, unset) == {"EMAIL_PROVIDER": "sendgrid"}


def test_the_environments_provider_webhook_key_and_admin_key_reach_the_hosts():
    env = stack_env({"EMAIL_PROVIDER": "smtp", "SMTP_HOST": "mail.example.org", "SMTP_PORT": "2525",
                     "SENDGRID_WEBHOOK_PUBLIC_KEY": USER_KEY, "MAILROOM_ADMIN_KEY": "mine",
                     "SENDGRID_API_URL": "https://api.sendgrid.com"})

    assert env["EMAIL_PROVIDER"] == "smtp"
    assert (env["SMTP_HOST"], env["SMTP_PORT"]) == ("mail.example.org", "2525")
    assert env["SENDGRID_WEBHOOK_PUBLIC_KEY"] == USER_KEY
    assert env["MAILROOM_ADMIN_KEY"] == "mine"
    assert env["SENDGRID_API_URL"] == "https://api.sendgrid.com"


def test_without_the_environment_the_hosts_use_the_stacks_simulator_and_azurite():
    stack = Stack(environ={}, http_port=17071)
    stack.azurite = AZURITE  # type: ignore[assignment]
    stack.simulator_url = "http://127.0.0.1:9"
    env = stack.worker_env()

    assert (env["EMAIL_PROVIDER"], env["SENDGRID_API_URL"]) == ("sendgrid", "http://127.0.0.1:9")
    assert env["SENDGRID_WEBHOOK_PUBLIC_KEY"] == stack.webhook_signer.public_key
    assert env["AzureWebJobsStorage"] == AZURITE.connection_string
    assert not stack.wants_smtp_sink and not stack.webhook_key_given


def test_smtp_from_the_environment_without_a_server_brings_the_smtp_sink():
    assert Stack(environ={"EMAIL_PROVIDER": "smtp"}).wants_smtp_sink
    assert Stack(environ={"EMAIL_PROVIDERS": "sendgrid,smtp"}).wants_smtp_sink
    assert not Stack(environ={"EMAIL_PROVIDER": "smtp", "SMTP_HOST": "mail.example.org"}).wants_smtp_sink


def test_a_callers_explicit_settings_win_over_the_environment():
    env = stack_env({"TASK_SIZE": "7", "EMAIL_PROVIDER": "smtp"}, settings={"TASK_SIZE": "100"})
    assert env["TASK_SIZE"] == "100"
