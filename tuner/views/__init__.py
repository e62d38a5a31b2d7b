"""What people read: the terminal display, the static report and the dashboard. They only read
studies."""
