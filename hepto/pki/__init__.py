"""The cluster PKI: CAs on the master, CSRs from every member, policy, kubeconfigs."""
