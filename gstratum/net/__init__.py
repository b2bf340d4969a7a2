"""The network side: connections, the Stratum server, takeover and the --workers supervisor (gevent)."""
