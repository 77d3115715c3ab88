"""The one exception type for problems the user can fix: a bad file, field, shape or path."""

from __future__ import annotations


class RistrettoError(Exception):
    """A user error, printed by the CLI as one line ``ristretto: error: <where>: <what>``.

    ``path``/``line``/``column`` locate the problem in a file, ``layer`` names the layer it
    concerns; whichever are known are prefixed to the message.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: int | None = None, layer: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.layer = layer

    def where(self) -> str:
        parts = []
        if self.path:
            loc = self.path
            if self.line is not None:
                loc += f":{self.line}"
                if self.column is not None:
                    loc += f":{self.column}"
            parts.append(loc)
        if self.layer is not None:
            parts.append(f"layer '{self.layer}'")
        return ": ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message

    def located(self, *, path: str | None = None, layer: str | None = None) -> RistrettoError:
        """Fill in context that was not known where the error was raised; returns self."""
        if self.path is None and path is not None:
            self.path = str(path)
        if self.layer is None and layer is not None:
            self.layer = layer
        return self


class OutOfMemoryError(RistrettoError, MemoryError):
    """Not enough memory for an array a layer needs (an input or num_output far too large):
    one line naming the layer, and still a MemoryError for code that catches one."""


class LayerCodeError(RistrettoError):
    """An exception raised by a Python layer's own code, as one line naming the layer;
    ``original`` is that exception (pycaffe lets it through unchanged)."""

    def __init__(self, message: str, original: BaseException, *, layer: str | None = None):
        super().__init__(message, layer=layer)
        self.original = original
