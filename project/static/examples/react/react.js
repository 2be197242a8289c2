// The vendored UMD build (a plain <script>, vendor/) as the ES module "react" of the import map.
const React = window.React;

export default React;
export const { createElement, useEffect, useReducer, useState } = React;
