"""In-process fakes of outside services, for tests."""
