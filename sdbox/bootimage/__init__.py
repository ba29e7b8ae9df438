"""The appliance image as R&D engineers handle it: generations, disks, flashing.

``generations`` loads box hardware profiles, ``disk`` reads the image's GPT
and its config area, ``flash`` writes and verifies a box's storage. The image
build and its QEMU boot test (bootimage/ at the top of the repository) use
the same modules. Nothing here runs on the box itself.
"""
