"""Client configuration for Kafka, derived once from the settings for each client library."""

from __future__ import annotations

import ssl
from typing import Any

from schemas.settings import Settings


def confluent_config(settings: Settings) -> dict[str, Any]:
    """librdkafka properties (confluent-kafka AdminClient/Producer) for the configured cluster."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username or ""
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    for key, path in (
        ("ssl.ca.location", settings.kafka_ssl_cafile),
        ("ssl.certificate.location", settings.kafka_ssl_certfile),
        ("ssl.key.location", settings.kafka_ssl_keyfile),
    ):
        if path:
            conf[key] = str(path)
    return conf


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context for aiokafka and Faust when the protocol uses TLS, else None."""
    if "SSL" not in settings.kafka_security_protocol:
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    return context


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka producers and consumers."""
    conf: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        conf["sasl_mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl_plain_username"] = settings.kafka_sasl_username
        conf["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    context = ssl_context(settings)
    if context is not None:
        conf["ssl_context"] = context
    return conf


def faust_credentials(settings: Settings) -> Any:
    """Faust ``broker_credentials`` for the configured security protocol (None for PLAINTEXT)."""
    import faust

    context = ssl_context(settings)
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
