"""Errors a person running mgte can fix: the message says what is wrong, the hint what to do."""


class UserError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
