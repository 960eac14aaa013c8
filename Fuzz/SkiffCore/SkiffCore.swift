// Re-exports the layers the fuzz targets exercise, as one library product.
@_exported import Devices
@_exported import Machine
@_exported import CFuzz
