"""PCI function model: config space and BARs served over vfio-user."""
