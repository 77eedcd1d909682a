"""The error raised for anything a user must change before a data-set run can proceed."""


class DatasetRunError(ValueError):
    """A data-set run cannot proceed as asked (data set, column, option, output folder); nothing is attributed.

    The message is one line that names the problem and the valid choices; the command line prints it as
    ``inseq-ext: error: ...`` with exit status 2.
    """
