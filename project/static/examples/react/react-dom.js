// The vendored UMD build (a plain <script>, vendor/) as the ES module "react-dom/client".
export const { createRoot } = window.ReactDOM;
