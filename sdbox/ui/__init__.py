"""sdbox.ui: the kiosk greeter (docs/greeter.md)."""

# Tests only: the file where the greeter writes the text of each screen it
# builds (sdbox.ui.app), for the screenshot tests to check the words as
# well as the pixels. Unset on the box: nothing is written.
SCREEN_FILE_VARIABLE = "SDBOX_GREETER_SCREEN_FILE"

# The idle blank's delay in seconds, over the generation's [power] blank_after_s: for the
# tests and the benchmark (sdbox.ui.panels). Unset on the box.
BLANK_VARIABLE = "SDBOX_BLANK_AFTER_S"

# The screen's density in percent, over the generation's [display] scale: for the tests.
# Unset on the box.
SCALE_VARIABLE = "SDBOX_DISPLAY_SCALE"
