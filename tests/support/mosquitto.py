"""The tests' broker is the bench's broker: a real Mosquitto with mutual TLS (see `hil.broker`)."""

from hil.broker import ClientCert, MosquittoBroker, Pki, free_port, mosquitto_binary, running_broker

__all__ = ["ClientCert", "MosquittoBroker", "Pki", "free_port", "mosquitto_binary", "running_broker"]
